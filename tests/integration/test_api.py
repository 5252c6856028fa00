"""remote_parallel_map against real daemons on loopback: results, prints, errors, parallelism."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import traceback

import pytest

import burla
from burla import remote_parallel_map

pytestmark = pytest.mark.timeout(60)


def double_and_print(x):
    print(f"working on {x}")
    return x * 2


def add(a, b):
    return a + b


def identity(x):
    return x


def slow_on_last(x):
    if x == 4:
        time.sleep(3)
    return x


def fail_on_seven(x):
    if x == 7:
        raise KeyError(f"no key {x}")
    return x


class Unpicklable(Exception):
    def __init__(self, a, b):  # its args hold a lock: it cannot be pickled, even without them
        super().__init__(f"{a}/{b}", __import__("threading").Lock())


def raise_unpicklable(x):
    raise Unpicklable(x, "b")


def fd_and_subprocess_output(x):
    os.write(1, f"fd-level {x}\n".encode())
    os.write(2, f"fd-stderr {x}\n".encode())
    subprocess.run(["echo", f"from-subprocess {x}"], check=True)
    return x


def interval(x):
    start = time.time()
    time.sleep(0.3)
    return (start, time.time())


def nested(x):
    from burla import remote_parallel_map as inner

    return sum(inner(identity, [x, x + 1, x + 2], spinner=False))


def test_round_trip_100_inputs_with_100_printed_lines(cluster, capsys):
    results = remote_parallel_map(double_and_print, list(range(100)), spinner=False)
    assert results == [x * 2 for x in range(100)]
    printed = capsys.readouterr().out.splitlines()
    assert sorted(printed) == sorted(f"working on {x}" for x in range(100))


def test_empty_inputs_touch_no_cluster(monkeypatch):
    monkeypatch.setenv("BURLA_CLUSTER", "tcp://127.0.0.1:1")  # nothing listens there
    started = time.monotonic()
    assert remote_parallel_map(identity, []) == []
    assert remote_parallel_map(identity, iter([])) == []
    assert list(remote_parallel_map(identity, (x for x in []), generator=True)) == []
    assert time.monotonic() - started < 5


def test_tuples_unpack_and_lists_do_not(cluster):
    assert remote_parallel_map(add, [(1, 2), (3, 4)], spinner=False) == [3, 7]
    assert remote_parallel_map(len, [[1, 2], [3, 4, 5]], spinner=False) == [2, 3]


def test_generator_yields_first_result_before_slow_last_ends(cluster):
    started = time.monotonic()
    results = remote_parallel_map(slow_on_last, [1, 2, 3, 4], generator=True, spinner=False)
    first = next(results)
    first_at = time.monotonic() - started
    rest = list(results)
    total = time.monotonic() - started
    assert sorted([first, *rest]) == [1, 2, 3, 4]
    assert rest[-1] == 4  # completion order: the slow one last
    assert first_at < total - 1.5, (first_at, total)


def test_exception_at_input_7_has_type_index_note_and_remote_frame(cluster):
    with pytest.raises(KeyError) as caught:
        remote_parallel_map(fail_on_seven, list(range(20)), spinner=False)
    exc = caught.value
    assert exc.burla_input_index == 7
    assert "[burla] failed on input index 7" in exc.__notes__
    frames = [frame.name for frame in traceback.extract_tb(exc.__traceback__)]
    assert "fail_on_seven" in frames


def test_unpicklable_exception_becomes_remote_error(cluster):
    with pytest.raises(burla.RemoteError) as caught:
        remote_parallel_map(raise_unpicklable, [5], spinner=False)
    err = caught.value
    assert err.type_name == "Unpicklable"
    assert "5/b" in err.remote_message
    assert "raise_unpicklable" in err.remote_traceback
    assert err.burla_input_index == 0


def test_fd_level_and_subprocess_output_is_captured(cluster, capfd):
    assert remote_parallel_map(fd_and_subprocess_output, [1, 2], spinner=False) == [1, 2]
    out, err = capfd.readouterr()
    for x in (1, 2):
        assert f"fd-level {x}" in out
        assert f"from-subprocess {x}" in out
        assert f"fd-stderr {x}" in err


def _overlaps(intervals):
    ordered = sorted(intervals)
    return any(b[0] < a[1] for a, b in zip(ordered, ordered[1:]))


def test_max_parallelism_1_never_overlaps_while_uncapped_does(cluster):
    capped = remote_parallel_map(interval, range(4), max_parallelism=1, spinner=False)
    assert not _overlaps(capped)
    uncapped = remote_parallel_map(interval, range(4), spinner=False)
    assert _overlaps(uncapped)


def test_too_big_function_names_it(cluster):
    blob = os.urandom(101 * 1024 * 1024)

    def closes_over_blob(x):
        return len(blob) + x

    with pytest.raises(burla.FunctionTooBig, match="closes_over_blob"):
        remote_parallel_map(closes_over_blob, [1], spinner=False)


def test_too_big_input_names_its_index(cluster):
    big = b"x" * (201 * 1024 * 1024)
    with pytest.raises(burla.InputTooBig, match="index 2") as caught:
        remote_parallel_map(len, [b"a", b"b", big], spinner=False)
    assert caught.value.index == 2


def test_nested_calls_work(cluster):
    assert remote_parallel_map(nested, [0, 10], spinner=False) == [3, 33]


@pytest.mark.timeout(120)
def test_lazy_generator_of_a_million_inputs_with_bounded_memory(cluster):
    script = (
        "import resource\n"
        "from burla import remote_parallel_map\n"
        "def f(x): return x\n"
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "total = sum(remote_parallel_map(f, (i for i in range(1_000_000)), generator=True,"
        " spinner=False))\n"
        "peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print(total, (peak - base) // 1024)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={**os.environ, **cluster.env()}, timeout=110)
    assert done.returncode == 0, done.stderr
    total, growth_mb = map(int, done.stdout.split())
    assert total == sum(range(1_000_000))
    assert growth_mb < 100, f"client memory grew {growth_mb} MB for a lazy generator"


def test_two_processes_jobs_never_mix(cluster):
    script = (
        "import sys\n"
        "from burla import remote_parallel_map\n"
        "tag = sys.argv[1]\n"
        "def f(x): return (tag, x)\n"
        "out = remote_parallel_map(f, range(3000), spinner=False)\n"
        "assert out == [(tag, x) for x in range(3000)], 'mixed or wrong results'\n"
        "print('ok', tag)\n"
    )
    env = {**os.environ, **cluster.env()}
    procs = [subprocess.Popen([sys.executable, "-c", script, tag], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for tag in ("alpha", "beta")]
    for proc, tag in zip(procs, ("alpha", "beta")):
        out, err = proc.communicate(timeout=50)
        assert proc.returncode == 0, err
        assert out.strip() == f"ok {tag}"


def test_job_with_a_function_sent_on_request_frees_its_slots_at_once(cluster):
    from burla.client.admin import cluster_status

    blob = b"x" * (1024 * 1024)  # over the inline limit: the coordinator asks for it

    def uses_blob(x):
        return len(blob) + x

    remote_parallel_map(identity, [1], spinner=False)  # a known cluster: chunks go early
    assert remote_parallel_map(uses_blob, range(50), spinner=False) == [
        len(blob) + x for x in range(50)
    ]
    deadline = time.monotonic() + 3  # well under the 5 s that a stuck job would hold them
    while time.monotonic() < deadline:
        status = cluster_status()
        if not status["jobs"] and all(n["used_cpus"] == 0 for n in status["nodes"]):
            break
        time.sleep(0.05)
    assert not status["jobs"], f"the job did not finish on the cluster: {status}"


def square(x):
    return x * x


def slow_square(x):
    time.sleep(0.5 if x else 0)
    return x * x


def test_jobs_of_a_process_reuse_a_connection_and_never_see_each_others_messages(cluster):
    from burla.client.connections import CONNECTIONS

    endpoint = cluster.env()["BURLA_CLUSTER"]
    assert remote_parallel_map(square, range(5), spinner=False) == [x * x for x in range(5)]
    [kept] = [k.sock for k in CONNECTIONS._idle[endpoint]]
    for n in range(1, 40):  # each job leaves Progress and Pings behind on the connection
        assert remote_parallel_map(square, range(n), spinner=False) == [x * x for x in range(n)]
        assert remote_parallel_map(str, [n], spinner=False) == [str(n)]
    assert [k.sock for k in CONNECTIONS._idle[endpoint]] == [kept]
    # A job that did not end cleanly (the caller stopped reading) closes its connection.
    stream = remote_parallel_map(slow_square, range(4), generator=True, spinner=False)
    assert next(stream) == 0
    stream.close()
    assert CONNECTIONS._idle[endpoint] == []
    assert remote_parallel_map(square, [3], spinner=False) == [9]
    assert len(CONNECTIONS._idle[endpoint]) == 1


def test_a_kept_connection_the_coordinator_forgot_costs_a_reconnect_not_the_job(make_cluster):
    """A kept connection skips its Hello; when the coordinator behind it restarted (and so never
    heard that Hello), the Submit is refused and the job goes on over a new connection."""
    from burla.client.connections import CONNECTIONS

    cluster = make_cluster()
    endpoint = cluster.env()["BURLA_CLUSTER"]
    assert remote_parallel_map(square, range(3), spinner=False) == [0, 1, 4]
    [forgotten] = [k.sock for k in CONNECTIONS._idle[endpoint]]
    assert cluster.coordinator is not None
    cluster.coordinator.kill()
    cluster.coordinator.wait()
    cluster.restart_coordinator()
    assert remote_parallel_map(square, range(3), spinner=False) == [0, 1, 4]
    [kept] = [k.sock for k in CONNECTIONS._idle[endpoint]]
    assert kept is not forgotten and forgotten.closed


def print_then_wait_on_last(x):
    print(f"working on {x}")
    time.sleep(2.0 if x == 19 else 0)
    return x


def test_a_detached_jobs_output_is_kept_on_the_cluster_while_the_job_is(cluster):
    from burla import protocol
    from burla.client.admin import cluster_address, request

    stream = remote_parallel_map(print_then_wait_on_last, range(20), detach=True,
                                 generator=True, spinner=False)
    done = {next(stream) for _ in range(19)}  # all but the slow last one: the job is kept
    assert done == set(range(19))
    [job] = [j for j in request(cluster_address(), protocol.StatusRequest()).info["jobs"]
             if j["function"] == "print_then_wait_on_last"]
    reply = request(cluster_address(), protocol.JobLogsRequest(job["job_id"]))
    assert isinstance(reply, protocol.StatusReply) and reply.info["kept"]
    printed = "".join(text for _index, stream_, text in reply.info["entries"] if stream_ == 1)
    assert {f"working on {x}" for x in range(19)} <= set(printed.splitlines())
    assert list(stream) == [19]
