"""The main job: map a function over inputs on the embedded local cluster, prints streamed home.

Run it with `python examples/hello.py`. The first run starts a per-user local cluster in the
background (a coordinator and one agent with this machine's CPUs); later runs reuse it.
"""

import socket
import time

from burla import remote_parallel_map


def my_function(x):
    print(f"working on {x} in process on {socket.gethostname()}")
    time.sleep(0.2)  # pretend to work, so the calls visibly run side by side
    return x * 2


if __name__ == "__main__":
    started = time.monotonic()
    results = remote_parallel_map(my_function, list(range(10)))
    print(f"results: {results}")
    assert results == [x * 2 for x in range(10)]
    print(f"10 calls in {time.monotonic() - started:.2f}s")
