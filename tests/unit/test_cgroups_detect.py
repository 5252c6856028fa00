"""Backend choice from mountinfo and /proc/self/cgroup, and the none backend's behaviour."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from burla.agent.cgroups import Limits, NoneBackend, detect_backend, plan_backend
from burla.agent.cgroups.detect import parse_mountinfo

# /proc/self/mountinfo of the development VM: v1 controllers plus a controller-less cgroup2
# at /sys/fs/cgroup/unified (a hybrid layout). v1 must win here.
DEV_VM_MOUNTINFO = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
23 27 0:22 / /sys rw,relatime - sysfs sysfs rw
24 27 0:6 / /dev rw,relatime - devtmpfs devtmpfs rw,size=12334524k,nr_inodes=3083631,mode=755
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard,resv_strict,resuid=65534,resgid=65534
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
DEV_VM_PROC_CGROUP = """\
9:name=systemd:/
8:pids:/
5:devices:/
4:memory:/process_api/844f4da8cc96a17202c0ed137f3ca972
2:cpuacct:/
1:cpu:/
0::/
"""
# Debian 12 on GCE: pure unified hierarchy, the agent a systemd service with Delegate=yes.
DEBIAN12_MOUNTINFO = """\
22 28 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
25 22 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 \
rw,nsdelegate,memory_recursiveprot
28 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw,discard,errors=remount-ro
"""
DEBIAN12_PROC_CGROUP = "0::/system.slice/burla-agent.service\n"
SERVICE = "sys/fs/cgroup/system.slice/burla-agent.service"


def fake_host(
    root: Path, mountinfo: str, proc_cgroup: str, controllers: dict[str, str] | None = None
) -> dict[str, str]:
    """Write fake proc files and cgroup.controllers files; returns detect kwargs."""
    (root / "mountinfo").write_text(mountinfo)
    (root / "cgroup").write_text(proc_cgroup)
    for rel, content in (controllers or {}).items():
        (root / rel).mkdir(parents=True, exist_ok=True)
        (root / rel / "cgroup.controllers").write_text(content + "\n")
    return {
        "mountinfo": str(root / "mountinfo"),
        "proc_cgroup": str(root / "cgroup"),
        "fs_root": str(root),
    }


@pytest.mark.timeout(10)
def test_parse_mountinfo_reads_fstype_super_options_and_escapes() -> None:
    mounts = parse_mountinfo(
        DEV_VM_MOUNTINFO + "50 1 0:40 / /mnt/my\\040dir rw shared:9 master:2 - tmpfs tmpfs rw\n"
    )
    memory = next(m for m in mounts if m.mountpoint == "/sys/fs/cgroup/memory")
    assert (memory.fstype, memory.super_options) == ("cgroup", ("rw", "memory"))
    assert mounts[-1].mountpoint == "/mnt/my dir" and mounts[-1].fstype == "tmpfs"


@pytest.mark.timeout(10)
def test_dev_vm_layout_chooses_v1_not_the_controllerless_unified_mount(tmp_path: Path) -> None:
    kwargs = fake_host(
        tmp_path, DEV_VM_MOUNTINFO, DEV_VM_PROC_CGROUP, {"sys/fs/cgroup/unified": "hugetlb"}
    )
    plan = plan_backend(euid=0, **kwargs)
    assert plan.backend == "v1"
    assert plan.v1_mounts == {
        c: f"/sys/fs/cgroup/{c}" for c in ("cpu", "cpuacct", "memory", "devices", "pids")
    }


@pytest.mark.timeout(10)
def test_debian12_layout_chooses_v2_in_the_service_cgroup(tmp_path: Path) -> None:
    kwargs = fake_host(
        tmp_path, DEBIAN12_MOUNTINFO, DEBIAN12_PROC_CGROUP, {SERVICE: "cpu io memory pids"}
    )
    plan = plan_backend(euid=0, **kwargs)
    assert (plan.backend, plan.v2_mount) == ("v2", "/sys/fs/cgroup")
    assert plan.v2_own == "/system.slice/burla-agent.service"


@pytest.mark.timeout(10)
def test_unified_without_memory_delegated_is_not_v2(tmp_path: Path) -> None:
    kwargs = fake_host(tmp_path, DEBIAN12_MOUNTINFO, DEBIAN12_PROC_CGROUP, {SERVICE: "cpu pids"})
    plan = plan_backend(euid=0, **kwargs)
    assert plan.backend == "none"
    assert "no usable cgroups" in plan.reason


@pytest.mark.timeout(10)
def test_container_mount_root_is_stripped_from_own_path(tmp_path: Path) -> None:
    mountinfo = "25 22 0:26 /docker/abc /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"
    kwargs = fake_host(tmp_path, mountinfo, "0::/docker/abc\n", {"sys/fs/cgroup": "cpu memory"})
    plan = plan_backend(euid=0, **kwargs)
    assert (plan.backend, plan.v2_own) == ("v2", "/")


@pytest.mark.timeout(10)
def test_non_root_gets_none_and_force_overrides(tmp_path: Path) -> None:
    kwargs = fake_host(tmp_path, DEV_VM_MOUNTINFO, DEV_VM_PROC_CGROUP)
    non_root = plan_backend(euid=1000, **kwargs)
    assert (non_root.backend, non_root.reason) == ("none", "the agent does not run as root")
    assert plan_backend(euid=1000, force="v1", **kwargs).backend == "v1"
    assert plan_backend(euid=0, force="none", **kwargs).backend == "none"
    forced_v2 = plan_backend(euid=0, force="v2", **kwargs)
    assert (forced_v2.backend, forced_v2.v2_mount) == ("v2", "/sys/fs/cgroup/unified")
    with pytest.raises(ValueError, match="'v3'"):
        plan_backend(euid=0, force="v3", **kwargs)


@pytest.mark.timeout(10)
def test_detect_backend_for_non_root_builds_none_and_logs_once(tmp_path: Path) -> None:
    kwargs = fake_host(tmp_path, DEV_VM_MOUNTINFO, DEV_VM_PROC_CGROUP)
    with capture_logs() as logs:
        backend = detect_backend(euid=1000, **kwargs)
        backend.create("e1", Limits(cpus=1, memory_bytes=1 << 20))
        backend.create("e2", Limits(cpus=1))
    assert (backend.name, backend.enforced) == ("none", False)
    warnings = [e for e in logs if e["event"] == "cgroup_limits_not_enforced"]
    assert len(warnings) == 1 and warnings[0]["reason"] == "the agent does not run as root"


@pytest.mark.timeout(10)
def test_detect_backend_on_this_machine_picks_v1_when_root_with_v1_memory() -> None:
    if os.geteuid() != 0 or not Path("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists():
        pytest.skip("needs root and a v1 memory controller at /sys/fs/cgroup/memory")
    unified = Path("/sys/fs/cgroup/cgroup.controllers")
    if unified.exists() and {"cpu", "memory"} <= set(unified.read_text().split()):
        pytest.skip("this machine has a usable unified hierarchy")
    assert detect_backend().name == "v1"  # building v1 writes nothing


@pytest.mark.timeout(10)
def test_none_cgroup_lists_and_kills_only_its_processes() -> None:
    cgroup = NoneBackend("test").create("e1", Limits(cpus=2))
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        cgroup.add_process(child.pid)
        assert cgroup.pids() == [child.pid]
        assert (cgroup.oom_kills(), cgroup.memory_peak_bytes()) == (0, None)
        cgroup.remove()
        assert child.wait(timeout=5) == -9
        assert cgroup.pids() == []
        cgroup.remove()  # idempotent, and never signals the (reaped, maybe reused) pid
    finally:
        child.kill()
        child.wait()
