"""One job cannot break the next on a warm executor: what a call left running is killed and its
zombies reaped when the job ends, a job that changed the executor's state hands the next job a
fresh fork, a fork bomb stops at the executor's pids.max with a clear error, and a clean job
still leaves its executor warm for the next."""

from __future__ import annotations

import builtins
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from daemons import Cluster, running_cluster

from burla import remote_parallel_map
from burla.agent.cgroups.detect import plan_backend
from burla.agent.config import DEFAULT_EXECUTOR_PIDS_MAX
from burla.agent.sandbox import sandbox_supported

pytestmark = pytest.mark.timeout(90)
# The agent option under test, far below the default so a test's fork bomb stays small.
PIDS_MAX = 256
# What the fork bomb tries: many more processes than PIDS_MAX allows.
BOMB_CHILDREN = 2000
PLAN = plan_backend()
PIDS_LIMITED = PLAN.backend == "v2" or (PLAN.backend == "v1" and "pids" in PLAN.v1_mounts)


@pytest.fixture(scope="module")
def one_executor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """An agent with one CPU, hence one executor: consecutive jobs meet on it unless the
    agent replaced it."""
    with running_cluster(tmp_path_factory.mktemp("hygiene"), cpus=1,
                         agent_args=("--executor-pids-max", str(PIDS_MAX))) as cluster:
        yield cluster


@pytest.fixture
def cluster(one_executor: Cluster, monkeypatch: pytest.MonkeyPatch) -> Cluster:
    for key, value in one_executor.env().items():
        monkeypatch.setenv(key, value)
    return one_executor


def run(function: Callable[..., Any], arg: Any = None) -> Any:
    [result] = remote_parallel_map(function, [arg], spinner=False)
    return result


def executor_facts(_: Any) -> dict[str, Any]:
    """What a job finds on its executor: who it is, and what an earlier job may have left."""
    children = []
    for task in os.listdir("/proc/self/task"):
        children += Path(f"/proc/self/task/{task}/children").read_text().split()
    return {
        "pid": os.getpid(),
        "children": children,
        "len": len([1, 2, 3]),
        "cwd": os.getcwd(),
        "sigterm": signal.getsignal(signal.SIGTERM) == signal.SIG_DFL,
        "pid_namespace": os.readlink("/proc/self/ns/pid"),
    }


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie does not), seen from inside the executor's pid namespace."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


# --- a clean job keeps its executor warm ----------------------------------------------------


def ordinary_job(_: Any) -> int:
    """What calls usually do: print, import, run and wait for a subprocess, use a thread."""
    import json  # noqa: F401  # a module the executor had not imported

    print("working")
    print("to stderr", file=sys.stderr)
    subprocess.run(["true"], check=True)
    thread = threading.Thread(target=time.sleep, args=(0.01,))
    thread.start()
    thread.join()
    return os.getpid()


def raise_value_error(_: Any) -> None:
    raise ValueError("a user error changes nothing of the executor")


def nested_job(_: Any) -> int:
    """A call that starts a job of its own, which loads burla's client in the executor."""
    assert remote_parallel_map(abs, [-1], spinner=False) == [1]
    return os.getpid()


def test_clean_jobs_run_on_the_same_warm_executor(cluster) -> None:
    first = run(ordinary_job)
    assert run(ordinary_job) == first
    with pytest.raises(ValueError):
        run(raise_value_error)
    assert run(executor_facts)["pid"] == first


def test_a_call_that_ran_a_nested_job_leaves_its_executor_warm(make_cluster) -> None:
    make_cluster(cpus=1)  # its own: the nested job's executor stays on as a second one
    first = run(nested_job)
    assert run(nested_job) == first


# --- what a call left running ---------------------------------------------------------------


def leave_zombies(count: int) -> dict[str, Any]:
    """Fork children that exit at once and are never waited for."""
    pids = []
    for _ in range(count):
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        pids.append(pid)
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.01)  # until each has exited: then it is a zombie of ours
    return {"pid": os.getpid(), "zombies": sum(Path(f"/proc/{p}").exists() for p in pids)}


def test_no_zombie_of_a_call_remains_under_its_executor(cluster) -> None:
    left = run(leave_zombies, 50)
    assert left["zombies"] == 50  # they were there when the call ended
    facts = run(executor_facts)
    assert facts["pid"] == left["pid"]  # the same, still warm executor
    assert facts["children"] == []


def start_daemon(_: Any) -> dict[str, Any]:
    """Double fork and setsid: a daemon whose parent exits, as `daemon(3)` makes one."""
    read, write = os.pipe()
    if os.fork() == 0:
        os.setsid()
        grandchild = os.fork()
        if grandchild == 0:
            os.close(read)
            os.close(write)
            time.sleep(300)
            os._exit(0)
        os.write(write, str(grandchild).encode())
        os._exit(0)
    os.close(write)
    daemon = int(os.read(read, 64))
    os.wait()  # the middle process, so only the daemon is left
    return {"pid": os.getpid(), "daemon": daemon, "alive": alive(daemon)}


def daemon_alive(daemon: int) -> dict[str, Any]:
    return {"pid": os.getpid(), "alive": alive(daemon)}


def test_a_daemon_a_call_started_is_dead_before_the_next_job(cluster) -> None:
    started = run(start_daemon)
    assert started["alive"]
    later = run(daemon_alive, started["daemon"])
    assert later["pid"] == started["pid"] and not later["alive"]


def pids_max(_: Any) -> str:
    """The pids.max of the call's own cgroup (v1's pids hierarchy, or v2's)."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "pids" in controllers.split(","):
            return Path(f"/sys/fs/cgroup/pids{path}/pids.max").read_text().strip()
        if line.startswith("0::") and Path(f"/sys/fs/cgroup{path}/pids.max").exists():
            return Path(f"/sys/fs/cgroup{path}/pids.max").read_text().strip()
    return "no pids cgroup"


@pytest.mark.skipif(not PIDS_LIMITED, reason="needs root and a pids cgroup controller")
def test_each_executor_is_held_to_the_agents_pid_limit(cluster, shared_cluster,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    assert run(pids_max) == str(PIDS_MAX)
    for key, value in shared_cluster.env().items():  # an agent without the option
        monkeypatch.setenv(key, value)
    assert run(pids_max) == str(DEFAULT_EXECUTOR_PIDS_MAX)


def fork_bomb(count: int) -> int:
    """Start `count` sleeping children, none of them waited for."""
    for _ in range(count):
        if os.fork() == 0:
            time.sleep(300)
            os._exit(0)
    return count


def fork_and_wait(count: int) -> int:
    children = [subprocess.Popen(["sleep", "0"]) for _ in range(count)]
    return sum(child.wait() == 0 for child in children)


@pytest.mark.skipif(not PIDS_LIMITED, reason="needs root and a pids cgroup controller")
def test_a_fork_bomb_stops_at_the_pid_limit_with_a_clear_error(cluster) -> None:
    with pytest.raises(BlockingIOError) as caught:
        run(fork_bomb, BOMB_CHILDREN)
    notes = "\n".join(getattr(caught.value, "__notes__", []))
    assert f"at most {PIDS_MAX} at once" in notes and "--executor-pids-max" in notes, notes
    # Its children were killed when the job ended: the next job can fork again.
    assert run(fork_and_wait, 20) == 20
    assert run(executor_facts)["children"] == []


# --- a job that changed the executor hands the next job a fresh one --------------------------


def replace_len(_: Any) -> int:
    builtins.len = lambda _obj: 42  # type: ignore[assignment]
    return os.getpid()


def close_output(_: Any) -> int:
    pid = os.getpid()
    os.close(1)
    os.close(2)
    return pid


def change_directory(_: Any) -> int:
    os.chdir("/")
    return os.getpid()


def handle_sigterm(_: Any) -> int:
    signal.signal(signal.SIGTERM, lambda _sig, _frame: None)
    return os.getpid()


def print_facts(_: Any) -> dict[str, Any]:
    print("the next job's output arrives")
    subprocess.run(["echo", "and so does its subprocesses'"], check=True)
    return executor_facts(None)


@pytest.mark.parametrize("change", [replace_len, close_output, change_directory,
                                    handle_sigterm])
def test_a_job_that_changed_its_executor_does_not_affect_the_next(cluster, capfd, change) -> None:
    clean = run(executor_facts)
    try:
        changed = run(change)
    except Exception:  # the job itself may suffer what it did (len() lies to the runner too)
        changed = None
    capfd.readouterr()
    facts = run(print_facts)
    assert facts["len"] == 3 and facts["sigterm"] and facts["cwd"] == clean["cwd"]
    out = capfd.readouterr().out
    assert "the next job's output arrives" in out and "and so does its subprocesses'" in out
    assert changed is None or changed == clean["pid"]
    assert facts["pid"] != clean["pid"]  # a fresh executor
    assert run(executor_facts)["pid"] == facts["pid"]  # and that one is kept warm again


# --- the same in the sandbox's pid namespace -------------------------------------------------


SANDBOX_UNSUPPORTED = sandbox_supported()


@pytest.mark.skipif(SANDBOX_UNSUPPORTED is not None,
                    reason=f"sandbox unsupported: {SANDBOX_UNSUPPORTED}")
def test_in_the_sandbox_daemons_die_and_a_changed_executor_is_replaced(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with running_cluster(tmp_path, cpus=1, agent_args=("--sandbox",)) as sandboxed:
        for key, value in sandboxed.env().items():
            monkeypatch.setenv(key, value)
        clean = run(executor_facts)
        started = run(start_daemon)
        assert started["alive"] and started["pid"] == 2  # the executor, in its pid namespace
        assert not run(daemon_alive, started["daemon"])["alive"]
        assert run(executor_facts)["pid_namespace"] == clean["pid_namespace"]  # still warm
        with pytest.raises(Exception):  # noqa: B017  # len() lies to the job's own runner too
            run(replace_len)
        fresh = run(executor_facts)
        assert fresh["len"] == 3 and fresh["pid_namespace"] != clean["pid_namespace"]

