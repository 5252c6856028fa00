"""The v2 backend against a fake cgroup2 tree whose mkdir/rmdir/writes behave like the kernel's."""

from __future__ import annotations

import errno
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from burla.agent.cgroups import CgroupError, Limits, V2Backend
from burla.agent.cgroups.base import CgroupFs, write_file
from burla.agent.cgroups.v2 import delegated_root

SERVICE = "/system.slice/burla-agent.service"
CORE_FILES = {
    "cgroup.procs": "",
    "cgroup.subtree_control": "",
    "cgroup.events": "populated 0\nfrozen 0\n",
    "cgroup.kill": "",
    "cpu.stat": "usage_usec 0\nuser_usec 0\nsystem_usec 0\n",
}
CONTROLLER_FILES = {
    "cpu": {"cpu.max": "max 100000\n", "cpu.weight": "100\n"},
    "memory": {
        "memory.max": "max\n",
        "memory.swap.max": "max\n",
        "memory.oom.group": "0\n",
        "memory.peak": "0\n",
        "memory.events": "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n",
    },
    "pids": {"pids.max": "max\n", "pids.current": "0\n"},
}


class FakeKernel(CgroupFs):
    """cgroup2 semantics the backend relies on, over plain files in a temp dir."""

    def __init__(self, mount: Path, *, swap_accounting: bool = True) -> None:
        self.mount = mount
        self.swap_accounting = swap_accounting
        self.writes: list[tuple[str, str]] = []  # (path relative to the mount, value)
        self.killed: list[int] = []
        self.exited: set[int] = set()  # moving these fails with ESRCH
        self.unkillable: set[int] = set()  # stuck in D state: cgroup.kill leaves them

    def make_service(self, controllers: str, procs: list[int]) -> Path:
        service = self.mount / SERVICE.lstrip("/")
        service.mkdir(parents=True)
        for name, content in CORE_FILES.items():
            (service / name).write_text(content)
        (service / "cgroup.controllers").write_text(controllers + "\n")
        (service / "cgroup.procs").write_text("".join(f"{p}\n" for p in procs))
        return service

    def procs(self, cgroup: Path) -> list[int]:
        return [int(p) for p in (cgroup / "cgroup.procs").read_text().split()]

    def _set_procs(self, cgroup: Path, pids: list[int]) -> None:
        (cgroup / "cgroup.procs").write_text("".join(f"{p}\n" for p in pids))

    def write(self, path: Path, value: str) -> None:
        self.writes.append((str(path.relative_to(self.mount)), value))
        cgroup = path.parent
        if path.name == "cgroup.procs":
            pid = int(value)
            if (cgroup / "cgroup.subtree_control").read_text().strip():
                raise CgroupError(f"no internal processes: {cgroup}", errno.EBUSY)
            for procs in self.mount.rglob("cgroup.procs"):
                self._set_procs(procs.parent, [p for p in self.procs(procs.parent) if p != pid])
            if pid in self.exited:  # it exited after being listed: gone from every cgroup
                raise CgroupError(f"no such process {pid}", errno.ESRCH)
            self._set_procs(cgroup, [*self.procs(cgroup), pid])
        elif path.name == "cgroup.subtree_control":
            if self.procs(cgroup):
                raise CgroupError(f"no internal processes: {cgroup}", errno.EBUSY)
            available = (cgroup / "cgroup.controllers").read_text().split()
            wanted = [token.lstrip("+") for token in value.split()]
            if not all(token.startswith("+") for token in value.split()):
                raise CgroupError(f"bad subtree_control {value!r}", errno.EINVAL)
            if not set(wanted) <= set(available):
                raise CgroupError(f"{wanted} not in {available}", errno.ENOENT)
            write_file(path, " ".join(wanted))
        elif path.name == "cgroup.kill":
            assert value == "1"
            for pid in self.procs(cgroup):
                if pid not in self.unkillable:
                    self.killed.append(pid)
            self._set_procs(cgroup, [p for p in self.procs(cgroup) if p in self.unkillable])
        else:
            write_file(path, value)

    def mkdir(self, path: Path) -> None:
        path.mkdir()
        for name, content in CORE_FILES.items():
            (path / name).write_text(content)
        enabled = (path.parent / "cgroup.subtree_control").read_text().split()
        (path / "cgroup.controllers").write_text(" ".join(enabled) + "\n")
        for controller in enabled:
            for name, content in CONTROLLER_FILES.get(controller, {}).items():
                if name == "memory.swap.max" and not self.swap_accounting:
                    continue
                (path / name).write_text(content)

    def rmdir(self, path: Path) -> None:
        if not path.is_dir():
            raise FileNotFoundError(errno.ENOENT, "no such cgroup", str(path))
        if any(child.is_dir() for child in path.iterdir()) or self.procs(path):
            raise OSError(errno.EBUSY, "cgroup busy", str(path))
        shutil.rmtree(path)  # cgroupfs drops its interface files with the directory


Factory = Callable[..., tuple[V2Backend, FakeKernel]]


@pytest.fixture
def make_backend(tmp_path: Path) -> Factory:
    """Build a V2Backend on a fresh fake tree; kwargs tune the fake service cgroup."""

    def factory(
        controllers: str = "cpuset cpu io memory pids",
        procs: tuple[int, ...] = (100, 101),
        swap_accounting: bool = True,
    ) -> tuple[V2Backend, FakeKernel]:
        kernel = FakeKernel(tmp_path / "sys/fs/cgroup", swap_accounting=swap_accounting)
        kernel.make_service(controllers, list(procs))
        backend = V2Backend(kernel.mount, SERVICE, "burla", kill_timeout_s=0.2, fs=kernel)
        return backend, kernel

    return factory


def read(path: Path) -> str:
    return path.read_text().strip()


@pytest.mark.timeout(10)
def test_init_moves_every_service_process_into_agent_leaf_before_enabling_controllers(
    make_backend: Factory,
) -> None:
    backend, kernel = make_backend()
    service = backend.service
    assert kernel.procs(service) == []
    assert kernel.procs(service / "agent") == [100, 101]
    assert read(service / "cgroup.subtree_control") == "cpu memory pids"
    assert read(service / "burla" / "cgroup.subtree_control") == "cpu memory pids"
    agent_procs = f"{SERVICE.lstrip('/')}/agent/cgroup.procs"
    assert kernel.writes[:3] == [
        (agent_procs, "100"),
        (agent_procs, "101"),
        (f"{SERVICE.lstrip('/')}/cgroup.subtree_control", "+cpu +memory +pids"),
    ]


@pytest.mark.timeout(10)
def test_init_skips_processes_that_exited_and_tolerates_a_second_agent_run(
    tmp_path: Path,
) -> None:
    kernel = FakeKernel(tmp_path / "sys/fs/cgroup")
    kernel.make_service("cpu memory pids", [100, 102])
    kernel.exited.add(102)
    first = V2Backend(kernel.mount, SERVICE, fs=kernel)
    assert kernel.procs(first.agent_leaf) == [100]
    # A second backend in the same agent sees itself in ".../agent" and keeps the same root.
    again = V2Backend(kernel.mount, SERVICE + "/agent", fs=kernel)
    assert again.service == first.service and again.root == first.root


@pytest.mark.timeout(10)
def test_init_without_memory_delegated_says_to_set_delegate(make_backend: Factory) -> None:
    with pytest.raises(CgroupError, match="Delegate=yes"):
        make_backend(controllers="cpu pids")


@pytest.mark.timeout(10)
def test_pids_controller_is_optional_but_a_pids_limit_then_fails(make_backend: Factory) -> None:
    backend, _ = make_backend(controllers="cpu memory")
    assert read(backend.service / "cgroup.subtree_control") == "cpu memory"
    with pytest.raises(CgroupError, match="pids"):
        backend.create("e1", Limits(pids=10))


@pytest.mark.timeout(10)
def test_create_writes_each_limit(make_backend: Factory) -> None:
    backend, _ = make_backend()
    cgroup = backend.create("e1", Limits(cpus=1.5, memory_bytes=512 << 20, pids=64))
    path = backend.root / "e1"
    assert cgroup.name == "e1"
    assert read(path / "cpu.max") == "150000 100000"
    assert read(path / "memory.max") == str(512 << 20)
    assert read(path / "memory.swap.max") == "0"
    assert read(path / "memory.oom.group") == "1"
    assert read(path / "pids.max") == "64"


@pytest.mark.timeout(10)
def test_create_unlimited_writes_max_and_tiny_cpu_gets_kernel_minimum(
    make_backend: Factory,
) -> None:
    backend, _ = make_backend()
    backend.create("free", Limits())
    free = backend.root / "free"
    assert read(free / "cpu.max") == "max 100000"
    assert read(free / "memory.max") == "max"
    assert read(free / "pids.max") == "max"
    backend.create("tiny", Limits(cpus=0.001))
    assert read(backend.root / "tiny" / "cpu.max") == "1000 100000"


@pytest.mark.timeout(10)
def test_create_skips_swap_max_without_swap_accounting(make_backend: Factory) -> None:
    backend, kernel = make_backend(swap_accounting=False)
    backend.create("e1", Limits(memory_bytes=1 << 30))
    assert not (backend.root / "e1" / "memory.swap.max").exists()
    assert read(backend.root / "e1" / "memory.max") == str(1 << 30)


@pytest.mark.timeout(10)
def test_create_rejects_existing_and_bad_names(make_backend: Factory) -> None:
    backend, _ = make_backend()
    backend.create("e1", Limits())
    with pytest.raises(CgroupError, match="already exists"):
        backend.create("e1", Limits())
    for bad in ("", "a/b", "..", "."):
        with pytest.raises(ValueError, match="one path component"):
            backend.create(bad, Limits())


@pytest.mark.timeout(10)
def test_add_process_moves_it_out_of_the_agent_leaf(make_backend: Factory) -> None:
    backend, kernel = make_backend()
    cgroup = backend.create("e1", Limits())
    cgroup.add_process(101)
    assert cgroup.pids() == [101]
    assert kernel.procs(backend.agent_leaf) == [100]


@pytest.mark.timeout(10)
def test_reads_oom_kills_cpu_and_peak_from_kernel_files(make_backend: Factory) -> None:
    backend, _ = make_backend()
    cgroup = backend.create("e1", Limits(memory_bytes=1 << 20))
    path = backend.root / "e1"
    assert cgroup.oom_kills() == 0
    (path / "memory.events").write_text("low 0\nhigh 0\nmax 7\noom 3\noom_kill 2\n")
    (path / "cpu.stat").write_text("usage_usec 2500000\nuser_usec 2000000\nsystem_usec 5\n")
    (path / "memory.peak").write_text("1048576\n")
    assert cgroup.oom_kills() == 2
    assert cgroup.cpu_seconds() == pytest.approx(2.5)
    assert cgroup.memory_peak_bytes() == 1 << 20
    (path / "memory.peak").unlink()  # kernels before 5.19
    assert cgroup.memory_peak_bytes() is None


@pytest.mark.timeout(10)
def test_kill_all_writes_cgroup_kill_and_waits_until_empty(make_backend: Factory) -> None:
    backend, kernel = make_backend()
    cgroup = backend.create("e1", Limits())
    cgroup.add_process(100)
    cgroup.add_process(101)
    cgroup.kill_all()
    assert (f"{SERVICE.lstrip('/')}/burla/e1/cgroup.kill", "1") in kernel.writes
    assert kernel.killed == [100, 101]
    assert cgroup.pids() == []


@pytest.mark.timeout(10)
def test_remove_kills_removes_dir_and_is_idempotent(make_backend: Factory) -> None:
    backend, kernel = make_backend()
    cgroup = backend.create("e1", Limits())
    cgroup.add_process(101)
    cgroup.remove()
    assert not (backend.root / "e1").exists()
    assert kernel.killed == [101]
    cgroup.remove()
    assert backend.root.is_dir() and backend.agent_leaf.is_dir()


@pytest.mark.timeout(10)
def test_remove_gives_up_with_the_path_when_a_process_survives(make_backend: Factory) -> None:
    backend, kernel = make_backend()
    cgroup = backend.create("e1", Limits())
    cgroup.add_process(101)
    kernel.unkillable.add(101)
    with pytest.raises(CgroupError, match="burla/e1"):
        cgroup.remove()


@pytest.mark.timeout(10)
def test_cleanup_stale_after_agent_restart_removes_only_executors(make_backend: Factory) -> None:
    backend, kernel = make_backend()
    backend.create("e1", Limits()).add_process(100)
    backend.create("e2", Limits())
    restarted = V2Backend(kernel.mount, SERVICE + "/agent", fs=kernel, kill_timeout_s=0.2)
    assert restarted.cleanup_stale() == 2
    assert [p.name for p in restarted.root.iterdir() if p.is_dir()] == []
    assert kernel.killed == [100]
    assert restarted.agent_leaf.is_dir()
    assert restarted.cleanup_stale() == 0


@pytest.mark.timeout(10)
def test_write_helper_names_file_and_value_and_never_creates_files(tmp_path: Path) -> None:
    missing = tmp_path / "memory.max"
    with pytest.raises(CgroupError, match=r"memory\.max.*'123'|'123'.*memory\.max"):
        write_file(missing, "123")
    assert not missing.exists()


@pytest.mark.timeout(10)
def test_delegated_root_and_limits_validation() -> None:
    assert delegated_root("/system.slice/a.service") == "/system.slice/a.service"
    assert delegated_root("/system.slice/a.service/agent") == "/system.slice/a.service"
    assert delegated_root("/agent") == "/"
    with pytest.raises(ValueError, match="cpus"):
        Limits(cpus=0)
    with pytest.raises(ValueError, match="memory_bytes"):
        Limits(memory_bytes=-1)
