"""Client processes for chaos tests: a job run by another Python process, its output read
line by line (with bounded waits) so the test can act on what it says while it runs."""

from __future__ import annotations

import json
import os
import queue
import re
import subprocess
import sys
import threading
import time

from daemons import Cluster

from .invariants import sigkill

# Runs one job; prints the count of results and a summary: none missing, none twice.
JOB_SCRIPT = """
import json, sys, time
from burla import remote_parallel_map
n, delay, detach = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3] == "detach"
def work(x):
    import time
    time.sleep(delay)
    return x * 3 + 1
values = list(remote_parallel_map(work, range(n), generator=True, spinner=False,
                                  detach=detach, max_parallelism=1))
expected = [x * 3 + 1 for x in range(n)]
print("SUMMARY " + json.dumps({"count": len(values), "exact": sorted(values) == expected,
                               "distinct": len(set(values))}), flush=True)
"""
STORED = re.compile(r"burla\.attach\('([0-9a-zA-Z_-]+)'\)")


class ClientProcess:
    """`JOB_SCRIPT` in its own process, with every stdout line queued as it comes."""

    def __init__(self, cluster: Cluster, n: int, delay: float, *, detach: bool) -> None:
        env = {**os.environ, **cluster.env(), "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(
            [sys.executable, "-c", JOB_SCRIPT, str(n), str(delay),
             "detach" if detach else "attached"],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self.seen: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_line(self, pattern: re.Pattern[str], timeout: float) -> re.Match[str]:
        """The first stdout line matching `pattern`; fails if the process ends or time runs out."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill()
                raise AssertionError(f"no line matching {pattern.pattern} in {timeout:.0f}s; "
                                     f"stdout so far: {self.seen[-5:]}; "
                                     f"stderr: {self.stderr()[-3000:]}")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"the client exited ({self.process.wait()}) before printing "
                                     f"{pattern.pattern}; stdout: {self.seen[-5:]}; "
                                     f"stderr: {self.stderr()[-2000:]}")
            self.seen.append(line)
            match = pattern.search(line)
            if match:
                return match

    def summary(self, timeout: float) -> dict[str, int]:
        match = self.wait_line(re.compile(r"^SUMMARY (.*)$"), timeout)
        return dict(json.loads(match.group(1)))

    def stderr(self) -> str:
        if self.process.poll() is None:
            return ""
        assert self.process.stderr is not None
        return self.process.stderr.read()

    def kill(self) -> None:
        sigkill(self.process)
        self.process.wait()


# Collects a detached job; prints the same summary as JOB_SCRIPT, plus whether it is in order.
ATTACH_SCRIPT = """
import json, sys
import burla
n = int(sys.argv[2])
values = burla.attach(sys.argv[1], generator=False, spinner=False)
expected = [x * 3 + 1 for x in range(n)]
print("SUMMARY " + json.dumps({"count": len(values), "exact": values == expected,
                               "distinct": len(set(values))}), flush=True)
"""


def attach_in_process(cluster: Cluster, job_id: str, n: int, timeout: float) -> dict[str, int]:
    """`burla.attach(job_id)` run by another process, killed if it takes over `timeout`."""
    env = {**os.environ, **cluster.env()}
    try:
        done = subprocess.run([sys.executable, "-c", ATTACH_SCRIPT, job_id, str(n)], env=env,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"burla.attach({job_id!r}) did not return in {timeout:.0f}s") \
            from None
    for line in done.stdout.splitlines():
        if line.startswith("SUMMARY "):
            return dict(json.loads(line[len("SUMMARY "):]))
    raise AssertionError(f"burla.attach({job_id!r}) failed ({done.returncode}): "
                         f"{done.stderr[-2000:]}")
