"""Executors are held to func_cpu and func_ram through cgroup v1 (root only), share a memory
budget under func_ram="dynamic", and leave no cgroup or process behind; without cgroups the
limits are logical and the agent says so once."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from daemons import running_cluster

import burla
from burla import remote_parallel_map
from burla.agent.cgroups.detect import plan_backend
from burla.agent.limits import cgroup_root_name

V1 = plan_backend().backend == "v1"
pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.skipif(not V1, reason="needs root and cgroup v1 (memory, cpu, cpuacct)"),
]
CGROUP_FS = Path("/sys/fs/cgroup")
# How long a process or cgroup may take to disappear after its executor ended.
GONE_TIMEOUT = 10.0


def own_cgroup(controller: str) -> Path:
    """This process's cgroup directory in a v1 hierarchy (run inside a call)."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, names, path = line.split(":", 2)
        if controller in names.split(","):
            return Path("/sys/fs/cgroup") / controller / path.lstrip("/")
    raise AssertionError(f"no {controller} cgroup")


def spin_three(seconds: float) -> dict[str, Any]:
    """Itself and two child processes busy for `seconds`, measured by the cgroup's cpuacct."""
    import subprocess
    import sys

    usage = own_cgroup("cpuacct") / "cpuacct.usage"
    children = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        cpu_before, started = int(usage.read_text()), time.monotonic()
        while time.monotonic() - started < seconds:
            pass
        cpu = (int(usage.read_text()) - cpu_before) / 1e9
        wall = time.monotonic() - started
    finally:
        for child in children:
            child.kill()
            child.wait()
    quota = int((own_cgroup("cpu") / "cpu.cfs_quota_us").read_text())
    return {"cpus_used": cpu / wall, "quota_us": quota}


def hog(megabytes: int, hold: float = 0.0) -> int:
    block = b"\x01" * (megabytes << 20)  # written, so every page is really used
    time.sleep(hold)
    return len(block) >> 20


def test_func_cpu_1_holds_three_busy_processes_to_one_cpu(cluster) -> None:
    [facts] = remote_parallel_map(spin_three, [1.5], func_cpu=1, spinner=False)
    assert facts["quota_us"] == 100_000
    assert facts["cpus_used"] < 1.25, facts


def test_call_past_integer_func_ram_fails_naming_it_and_others_are_unaffected(cluster) -> None:
    finished: list[int] = []
    with pytest.raises(burla.OutOfMemory) as caught:
        for result in remote_parallel_map(hog, [10, 1500, 20], func_ram=1, generator=True,
                                          spinner=False):
            finished.append(result)
    error = caught.value
    assert isinstance(error, burla.NodeDisconnected)  # what handlers written for it catch
    assert (error.func_ram, error.limit_bytes, error.burla_input_index) == (1, 1 << 30, 1)
    message = str(error)
    assert "func_ram=1 GB (1073741824 bytes)" in message and "input 1" in message
    assert sorted(finished) == [10, 20]
    assert remote_parallel_map(hog, [10, 20], func_ram=1, spinner=False) == [10, 20]


def test_dynamic_oom_lowers_parallelism_then_fails_what_cannot_fit(make_cluster) -> None:
    made = make_cluster(agent_args=("--memory-budget-gb", "0.5"))
    assert remote_parallel_map(hog, [1, 1], spinner=False) == [1, 1]  # both executors warm
    # Two 300 MB calls do not fit 0.5 GB together: one is killed, then runs alone.
    assert remote_parallel_map(hog, [(300, 2.0), (300, 2.0)], spinner=False) == [300, 300]
    assert '"parallelism_lowered"' in (made.root / "agent0.log").read_text()
    with pytest.raises(burla.OutOfMemory, match="needs more memory than node agent0") as caught:
        remote_parallel_map(hog, [700], spinner=False)
    assert (caught.value.func_ram, caught.value.limit_bytes) == ("dynamic", 1 << 29)
    assert remote_parallel_map(hog, [1, 2], spinner=False) == [1, 2]


def leave_processes_then_crash(workdir: str) -> int:
    """First attempt: start a detached and an attached sleeper, record them, die."""
    import subprocess

    record = Path(workdir) / "left.txt"
    if record.exists():
        return os.getpid()
    detached = subprocess.Popen(["sleep", "300"], start_new_session=True)
    attached = subprocess.Popen(["sleep", "301"])
    cgroups = [str(own_cgroup(c)) for c in ("memory", "cpu", "pids")]
    record.write_text(" ".join([str(detached.pid), str(attached.pid), *cgroups]))
    os._exit(1)


def wait_gone(paths: list[Path], pids: list[int]) -> None:
    deadline = time.monotonic() + GONE_TIMEOUT
    while time.monotonic() < deadline:
        alive = [p for p in pids if psutil.pid_exists(p)
                 and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        if not alive and not any(path.exists() for path in paths):
            return
        time.sleep(0.05)
    raise AssertionError(f"left behind: pids {alive}, cgroups {[p for p in paths if p.exists()]}")


def test_no_cgroup_or_process_outlives_its_executor_or_the_agent(tmp_path: Path,
                                                                 monkeypatch) -> None:
    (tmp_path / "cluster").mkdir()
    with running_cluster(tmp_path / "cluster") as made:
        for key, value in made.env().items():
            monkeypatch.setenv(key, value)
        remote_parallel_map(leave_processes_then_crash, [str(tmp_path)], spinner=False)
        detached, attached, *cgroups = (tmp_path / "left.txt").read_text().split()
        wait_gone([Path(c) for c in cgroups], [int(detached), int(attached)])
        root = cgroup_root_name(made.root / "agent0")
        assert (CGROUP_FS / "memory" / root / "dynamic").is_dir()  # the agent still runs
    assert not list(CGROUP_FS.glob(f"*/{root}")), "the agent left its cgroups"


def test_a_killed_agent_leaves_no_executor_or_cgroup(make_cluster) -> None:
    made = make_cluster()
    agent = made.agents[0]
    assert remote_parallel_map(hog, [1, 2], spinner=False) == [1, 2]
    descendants = psutil.Process(agent.pid).children(recursive=True)
    assert any("--zygote" in p.cmdline() for p in descendants)
    roots = list(CGROUP_FS.glob(f"*/{cgroup_root_name(made.root / 'agent0')}"))
    assert roots
    agent.kill()  # no clean shutdown: the zygote notices and clears up
    agent.wait()
    wait_gone(roots, [p.pid for p in descendants])


def cgroup_lines(_x: int) -> str:
    return Path("/proc/self/cgroup").read_text()


def test_without_cgroups_limits_are_logical_and_said_once(make_cluster) -> None:
    made = make_cluster(agent_args=("--cgroups", "none"))
    assert "burla-" not in remote_parallel_map(cgroup_lines, [1], spinner=False)[0]
    remote_parallel_map(cgroup_lines, [1], func_cpu=2, func_ram=1, spinner=False)  # new forks
    log = (made.root / "agent0.log").read_text()
    assert log.count('"cgroup_limits_not_enforced"') == 1
