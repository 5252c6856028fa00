"""The v1 backend on this machine's real cgroup v1 hierarchies (root only; skipped otherwise)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from burla.agent.cgroups import Limits, V1Backend
from burla.agent.cgroups.detect import parse_mountinfo, v1_controller_mounts
from burla.agent.cgroups.v1 import BASIC_DEVICES, REQUIRED_CONTROLLERS, V1Cgroup

MOUNTS = {
    c: Path(m)
    for c, m in v1_controller_mounts(
        parse_mountinfo(Path("/proc/self/mountinfo").read_text())
    ).items()
}
pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not all(c in MOUNTS for c in REQUIRED_CONTROLLERS),
    reason="needs root and v1 memory, cpu and cpuacct controllers",
)

BUSY = "while True: pass"
# Waits for a line on stdin, so the test can move it into a cgroup before it does anything.
AFTER_GO = "import sys; sys.stdin.readline(); "

Spawn = Callable[..., subprocess.Popen[bytes]]


@pytest.fixture
def backend() -> Iterator[V1Backend]:
    """A backend under a root unique to this test, so it never touches a real agent's cgroups."""
    backend = V1Backend(MOUNTS, f"burla-test-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    yield backend
    backend.cleanup_stale()
    for root in backend.roots():
        if root.exists():
            root.rmdir()


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    """Start Python children; every one is killed and reaped at the end, even on failure."""
    children: list[subprocess.Popen[bytes]] = []

    def start(code: str, **kwargs: Any) -> subprocess.Popen[bytes]:
        child: subprocess.Popen[bytes] = subprocess.Popen([sys.executable, "-c", code], **kwargs)
        children.append(child)
        return child

    yield start
    for child in children:
        child.kill()
        child.wait()


def favour(backend: V1Backend, name: str) -> None:
    """Max out cpu.shares so other work on this shared machine cannot starve a measurement."""
    shares = MOUNTS["cpu"] / backend.root_name / name / "cpu.shares"
    shares.write_text("262144")


def machine_busy_seconds() -> float:
    """CPU-seconds all CPUs spent not idle since boot, from /proc/stat."""
    ticks = [int(t) for t in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = ticks[3] + ticks[4]  # idle + iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def cpu_rates(cgroup: V1Cgroup, window_s: float) -> tuple[float, float]:
    """(cgroup, everything else) CPU-seconds per wall second over one window."""
    used0, busy0, t0 = cgroup.cpu_seconds(), machine_busy_seconds(), time.monotonic()
    time.sleep(window_s)  # a measurement window, not a wait for readiness
    elapsed = time.monotonic() - t0
    ours = (cgroup.cpu_seconds() - used0) / elapsed
    return ours, (machine_busy_seconds() - busy0) / elapsed - ours


def is_gone(pid: int) -> bool:
    """True once `pid` no longer runs (absent, or a zombie awaiting its reaper)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


@pytest.mark.timeout(60)
def test_limit_files_are_written(backend: V1Backend) -> None:
    limits = Limits(cpus=1.5, memory_bytes=200 << 20, pids=50)
    backend.create("files", limits)
    assert len(backend.roots()) == len(set(MOUNTS.values()))
    name = backend.root_name
    memory = MOUNTS["memory"] / name / "files"
    assert (memory / "memory.limit_in_bytes").read_text().strip() == str(200 << 20)
    if (memory / "memory.memsw.limit_in_bytes").exists():
        assert (memory / "memory.memsw.limit_in_bytes").read_text().strip() == str(200 << 20)
    assert (memory / "memory.swappiness").read_text().strip() == "0"
    cpu = MOUNTS["cpu"] / name / "files"
    assert (cpu / "cpu.cfs_period_us").read_text().strip() == "100000"
    assert (cpu / "cpu.cfs_quota_us").read_text().strip() == "150000"
    if "pids" in MOUNTS:
        assert (MOUNTS["pids"] / name / "files" / "pids.max").read_text().strip() == "50"
    if "devices" in MOUNTS:  # no devices limit asked: that hierarchy is left alone
        assert not (MOUNTS["devices"] / name / "files").exists()


@pytest.mark.timeout(60)
def test_cpu_quota_caps_three_busy_children_at_one_cpu(backend: V1Backend, spawn: Spawn) -> None:
    cgroup = backend.create("cpu-capped", Limits(cpus=1))
    favour(backend, "cpu-capped")
    for _ in range(3):
        cgroup.add_process(spawn(BUSY).pid)
    assert len(cgroup.pids()) == 3
    rate, _ = cpu_rates(cgroup, 2.0)
    # The lower bound only proves the children ran; other work may take the rest of the CPU.
    assert 0.1 < rate <= 1.25, f"{rate:.2f} CPU-seconds per second under a 1-CPU quota"


@pytest.mark.timeout(60)
def test_without_quota_three_busy_children_use_more_than_one_cpu(
    backend: V1Backend, spawn: Spawn
) -> None:
    if (os.cpu_count() or 1) < 2:
        pytest.skip("needs at least 2 CPUs")
    cgroup = backend.create("cpu-free", Limits())
    favour(backend, "cpu-free")
    for _ in range(3):
        cgroup.add_process(spawn(BUSY).pid)
    # This machine is shared: a window counts only if the rest of it left room (under 0.3 CPU),
    # and the scheduler needs a second or two before high cpu.shares pay off.
    windows = []
    for _ in range(8):
        ours, others = cpu_rates(cgroup, 1.0)
        windows.append((round(ours, 2), round(others, 2)))
        if ours > 1.4:
            return
        assert others >= 0.3, f"only {ours:.2f} CPU-seconds per second on a quiet machine"
    pytest.skip(f"machine too busy to measure unthrottled use: (ours, others) = {windows}")


@pytest.mark.timeout(60)
def test_child_over_memory_limit_is_oom_killed(backend: V1Backend, spawn: Spawn) -> None:
    cgroup = backend.create("oom", Limits(memory_bytes=100 << 20))
    # Multiplying bytes writes every page, so all 300 MB are really charged.
    child = spawn(AFTER_GO + "b = b'x' * (300 << 20); print('survived')", stdin=subprocess.PIPE)
    cgroup.add_process(child.pid)
    assert child.stdin is not None
    child.stdin.write(b"go\n")
    child.stdin.close()
    assert child.wait(timeout=30) == -9
    assert cgroup.oom_kills() >= 1
    peak = cgroup.memory_peak_bytes()
    assert peak is not None and peak <= 100 << 20


@pytest.mark.timeout(60)
def test_remove_kills_the_whole_tree_and_removes_every_dir(
    backend: V1Backend, spawn: Spawn
) -> None:
    cgroup = backend.create("tree", Limits(cpus=1, memory_bytes=200 << 20, pids=20))
    code = AFTER_GO + (
        "import subprocess, time; g = subprocess.Popen(['sleep', '60']); "
        "print(g.pid, flush=True); time.sleep(60)"
    )
    child = spawn(code, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    cgroup.add_process(child.pid)
    assert child.stdin is not None and child.stdout is not None
    child.stdin.write(b"go\n")
    child.stdin.flush()
    grandchild = int(child.stdout.readline())
    assert sorted(cgroup.pids()) == sorted([child.pid, grandchild])
    cgroup.remove()
    assert child.wait(timeout=10) == -9
    assert is_gone(grandchild)
    assert [d for d in backend.roots() if (d / "tree").exists()] == []
    cgroup.remove()  # idempotent


@pytest.mark.timeout(60)
def test_cleanup_stale_removes_what_a_previous_agent_left(backend: V1Backend, spawn: Spawn) -> None:
    backend.create("left-1", Limits(memory_bytes=50 << 20)).add_process(
        spawn("import time; time.sleep(60)").pid
    )
    backend.create("left-2", Limits(cpus=0.5, devices=("c 1:11 rwm",)))
    restarted = V1Backend(MOUNTS, backend.root_name)
    assert restarted.cleanup_stale() == 2
    assert [child for root in backend.roots() for child in root.iterdir() if child.is_dir()] == []
    assert restarted.cleanup_stale() == 0


@pytest.mark.timeout(60)
def test_devices_limit_denies_everything_but_basics_and_extras(
    backend: V1Backend, spawn: Spawn, tmp_path: Path
) -> None:
    if "devices" not in MOUNTS:
        pytest.skip("no v1 devices controller")
    cgroup = backend.create("devs", Limits(devices=("c 1:11 rwm",)))
    listed = (MOUNTS["devices"] / backend.root_name / "devs" / "devices.list").read_text()
    assert set(BASIC_DEVICES + ("c 1:11 rwm",)) <= set(listed.splitlines())
    allowed, denied = tmp_path / "kmsg", tmp_path / "mem"
    os.mknod(allowed, stat.S_IFCHR | 0o600, os.makedev(1, 11))
    os.mknod(denied, stat.S_IFCHR | 0o600, os.makedev(1, 1))
    code = AFTER_GO + (
        "import os\n"
        "for path in ['/dev/null', sys.argv[1], sys.argv[2]]:\n"
        "    try:\n"
        "        os.close(os.open(path, os.O_RDONLY)); print('ok')\n"
        "    except OSError as e:\n"
        "        print(e.errno)\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code, str(allowed), str(denied)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        cgroup.add_process(child.pid)
        out, _ = child.communicate(b"go\n", timeout=30)
    finally:
        child.kill()
        child.wait()
    assert out.decode().split() == ["ok", "ok", str(1)]  # EPERM on the device not allowed
