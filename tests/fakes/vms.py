"""The fake Compute API's VMs as real hosts: each booted VM is a network namespace on a test
bridge, running its real startup script against a stand-in metadata server.

`NamespaceVms` is the fake's `VmHooks`. The bridge holds one private /24 of 10.201.0.0/16 that
no address on this host uses; the host (the coordinator, the metadata server and its Compute
relay) is its .1, and each VM gets the next address. A deleted VM's processes get SIGTERM
(then SIGKILL after a grace period, as a VM's shutdown does), a preempted VM's agent SIGKILL.
Every namespace, link and cgroup it made is gone after `close()`; `leftovers()` says what is
not. Tests only; needs root.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from burla.agent.limits import cgroup_root_name
from tests.fakes.compute_vms import FakeVm, VmHooks
from tests.fakes.metadata import FakeMetadata
from tests.netns import must_ip, run_ip

TEST_BLOCK = ipaddress.IPv4Network("10.201.0.0/16")
CGROUP_MOUNT = Path("/sys/fs/cgroup")
STARTUP_SCRIPT_KEY = "startup-script"
# A deleted VM's processes get this long after SIGTERM (the unit's TimeoutStopSec is 20 s).
SHUTDOWN_GRACE_S = 15.0
KILL_WAIT_S = 10.0  # after SIGKILL, the longest wait for the kernel to take them


def _free_subnet() -> ipaddress.IPv4Network:
    """A /24 of TEST_BLOCK with no address on this host, starting from one our pid picks."""
    shown = run_ip("-4", "-o", "addr", "show").stdout
    used = {ipaddress.ip_interface(word).network.supernet(new_prefix=24)
            for line in shown.splitlines() for word in line.split()
            if word.startswith("10.201.") and "/" in word}
    subnets = [s for s in TEST_BLOCK.subnets(new_prefix=24) if s.network_address.packed[2]]
    start = os.getpid() % len(subnets)
    for subnet in subnets[start:] + subnets[:start]:
        if subnet not in used:
            return subnet
    raise RuntimeError(f"no free /24 in {TEST_BLOCK}")


@dataclass
class Machine:
    """One booted VM: its namespace, link, address and the startup script's process."""

    name: str
    zone: str
    namespace: str
    host_if: str
    address: str
    directory: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def state_dir(self) -> Path:
        return self.directory / "state"

    @property
    def log(self) -> Path:
        return self.state_dir / "agent.log"

    def pids(self) -> list[int]:
        """Every process in the VM's namespace now."""
        return [int(p) for p in run_ip("netns", "pids", self.namespace).stdout.split()]


@dataclass
class Ended:
    """How a VM's machine ended: what the test may check."""

    name: str
    preempted: bool
    returncode: int | None  # the startup script's (so the agent's, which it execs)
    log: str


@dataclass
class NamespaceVms(VmHooks):
    """Boots the fake's VMs in namespaces. `attributes`: metadata every VM has unless its own
    says otherwise; `agent_args`: more flags for each VM's agent.

    vms = NamespaceVms(tmp_path / "vms"); fake = FakeCompute(hooks=vms)
    vms.start(fake.url); fake.start()    # then a coordinator on tcp://{vms.host_address}:0
    ...; fake.close(); vms.close(); assert not vms.leftovers()
    """

    root: Path
    attributes: Mapping[str, str] = field(default_factory=dict)
    agent_args: str = "--cpus 1 --warm 1"
    machines: dict[tuple[str, str], Machine] = field(default_factory=dict)
    ended: list[Ended] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # what a cleanup could not do
    metadata: FakeMetadata | None = None

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._tag = os.urandom(2).hex()
        self._subnet = _free_subnet()
        self._bridge = f"bvb{self._tag}"
        self._next = 2
        self._made: list[tuple[str, str]] = []  # (namespace, host link) of every VM
        self._cgroups: list[str] = []

    @property
    def host_address(self) -> str:
        """The host's address on the VMs' network: where they reach the coordinator."""
        return str(self._subnet.network_address + 1)

    def start(self, compute_url: str = "") -> NamespaceVms:
        """Make the bridge and start the metadata server (relaying the API at `compute_url`)."""
        must_ip("link", "add", self._bridge, "type", "bridge")
        must_ip("addr", "add", f"{self.host_address}/24", "dev", self._bridge)
        must_ip("link", "set", self._bridge, "up")
        self.metadata = FakeMetadata(self.host_address, compute_url).start()
        return self

    # -- the hooks --------------------------------------------------------------------------

    def booted(self, vm: FakeVm) -> None:
        with self._lock:
            number, self._next = self._next, self._next + 1
        try:
            machine = self._wire(vm, number)
        except (RuntimeError, OSError, subprocess.SubprocessError) as e:
            # Kept for the fixture's check; raising would end the fake's hook thread.
            self.problems.append(f"VM {vm.name} could not boot: {e}")
            return
        assert self.metadata is not None, "start() the VMs before the fake boots any"
        attributes = {**self.attributes, "burla-compute-endpoint": self.metadata.compute_relay,
                      **vm.metadata}
        self.metadata.add(machine.address, vm.name, vm.zone, vm.project, attributes)
        script = attributes.get(STARTUP_SCRIPT_KEY, "")
        if script:
            machine.process = self._run_script(machine, script)
        with self._lock:
            self.machines[vm.zone, vm.name] = machine

    def gone(self, vm: FakeVm, preempted: bool) -> None:
        with self._lock:
            machine = self.machines.pop((vm.zone, vm.name), None)
        if machine is not None:
            self._shut_down(machine, preempted)

    # -- what tests use ---------------------------------------------------------------------

    def machine(self, name: str, within: float = 30.0) -> Machine | None:
        """The machine of VM `name`, once the fake's hook thread has booted it (it does so
        after the insert's operation is done); None if it has not within `within` seconds."""
        deadline = time.monotonic() + within
        while True:
            with self._lock:
                found = next((m for m in self.machines.values() if m.name == name), None)
            if found is not None or time.monotonic() > deadline or \
                    any(name in problem for problem in self.problems):
                return found
            time.sleep(0.05)

    def close(self) -> None:
        """Shut down every VM still up (as deleted), then remove the bridge and the server."""
        with self._lock:
            machines, self.machines = list(self.machines.values()), {}
        for machine in machines:
            self._shut_down(machine, preempted=False)
        run_ip("link", "del", self._bridge)
        if self.metadata is not None:
            self.metadata.close()

    def leftovers(self) -> list[str]:
        """Namespaces, links, processes and cgroups of these VMs that still exist."""
        namespaces = set(run_ip("netns", "list").stdout.split())
        links = {line.split(":")[1].strip().split("@")[0]
                 for line in run_ip("-o", "link", "show").stdout.splitlines() if ":" in line}
        left = [f"namespace {ns}" for ns, _ in self._made if ns in namespaces]
        left += [f"link {link}" for _, link in self._made if link in links]
        left += [f"bridge {self._bridge}"] if self._bridge in links else []
        left += [f"cgroup {path}" for path in self._cgroup_dirs()]
        return left + self.problems

    # -- plumbing ---------------------------------------------------------------------------

    def _wire(self, vm: FakeVm, number: int) -> Machine:
        address = str(self._subnet.network_address + number)
        namespace, host_if, ns_if = (f"bv-{self._tag}-{number}", f"bvh{self._tag}{number}",
                                     f"bvn{self._tag}{number}")
        directory = self.root / vm.name
        directory.mkdir(parents=True, exist_ok=True)
        machine = Machine(vm.name, vm.zone, namespace, host_if, address, directory)
        self._made.append((namespace, host_if))
        self._cgroups.append(cgroup_root_name(machine.state_dir))
        try:
            must_ip("netns", "add", namespace)
            must_ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if, "netns",
                  namespace)
            must_ip("link", "set", host_if, "master", self._bridge)
            must_ip("link", "set", host_if, "up")
            inside = ("netns", "exec", namespace, "ip")
            must_ip(*inside, "addr", "add", f"{address}/24", "dev", ns_if)
            must_ip(*inside, "link", "set", ns_if, "up")
            must_ip(*inside, "link", "set", "lo", "up")
        except RuntimeError:
            run_ip("netns", "del", namespace)
            run_ip("link", "del", host_if)
            raise
        return machine

    def _run_script(self, machine: Machine, script: str) -> subprocess.Popen[bytes]:
        """The VM's startup script, as GCE runs it: as root, from a file, once per boot."""
        path = machine.directory / "startup-script"
        path.write_text(script)
        assert self.metadata is not None
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "HOME": "/root", "LANG": "C.UTF-8",
            "BURLA_STARTUP_METADATA_URL": self.metadata.url,
            "BURLA_STARTUP_SKIP_INSTALL": "1",
            "BURLA_STARTUP_PYTHON": sys.executable,
            "BURLA_STARTUP_STATE_DIR": str(machine.state_dir),
            "BURLA_STARTUP_AGENT_ARGS": self.agent_args,
        }
        # nsenter joins only the network namespace; `ip netns exec` would also remount /sys,
        # which hides /sys/fs/cgroup from the agent, which a real VM's agent has. Neither
        # forks: the process is the script's, and once it execs the agent, the agent's.
        enter = ["nsenter", f"--net=/run/netns/{machine.namespace}", "--"]
        with open(machine.directory / "startup.log", "ab") as log:
            return subprocess.Popen([*enter, "bash", str(path)],
                                    stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=env,
                                    start_new_session=True)

    def _shut_down(self, machine: Machine, preempted: bool) -> None:
        """Stop everything in the VM, then remove its namespace and link."""
        process = machine.process
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGKILL if preempted else signal.SIGTERM)
        _wait_empty(machine, SHUTDOWN_GRACE_S)
        for pid in machine.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if not _wait_empty(machine, KILL_WAIT_S):
            self.problems.append(f"processes {machine.pids()} of VM {machine.name} outlived "
                                 f"SIGKILL; its namespace {machine.namespace} is kept")
            return
        returncode = None
        if process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                returncode = process.wait(timeout=KILL_WAIT_S)
        if self.metadata is not None:
            self.metadata.remove(machine.address)
        self._remove_cgroups(machine, preempted)
        run_ip("netns", "del", machine.namespace)
        run_ip("link", "del", machine.host_if)  # gone already with its peer, normally
        log = machine.log.read_text(errors="replace") if machine.log.exists() else ""
        self.ended.append(Ended(machine.name, preempted, returncode, log))

    def _remove_cgroups(self, machine: Machine, preempted: bool) -> None:
        """An agent that stopped removed its cgroups; after a SIGKILL its zygote does, or, if
        that was killed too, we do. Either way they must hold no process by now."""
        name = cgroup_root_name(machine.state_dir)
        for root in self._cgroup_dirs(name):
            busy = [p for procs in root.rglob("cgroup.procs")
                    for p in procs.read_text().split()]
            if busy or not preempted:
                self.problems.append(f"cgroup {root} of VM {machine.name} left behind "
                                     f"(processes: {busy})")
            for path in sorted((p for p in root.rglob("*") if p.is_dir()),
                               key=lambda p: len(p.parts), reverse=True):
                with contextlib.suppress(OSError):
                    path.rmdir()
            with contextlib.suppress(OSError):
                root.rmdir()

    def _cgroup_dirs(self, *names: str) -> list[Path]:
        if not CGROUP_MOUNT.is_dir():
            return []
        wanted = names or tuple(self._cgroups)
        return [hierarchy / name for hierarchy in CGROUP_MOUNT.iterdir() if hierarchy.is_dir()
                for name in wanted if (hierarchy / name).is_dir()]


def _wait_empty(machine: Machine, timeout: float) -> bool:
    """Whether the namespace had no process left within `timeout`."""
    deadline = time.monotonic() + timeout
    while machine.pids():
        if machine.process is not None:
            machine.process.poll()  # reap the script (the agent): a zombie still counts
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def unavailable() -> str | None:
    """Why VMs cannot boot in namespaces here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is missing"
    if shutil.which("nsenter") is None:
        return "the `nsenter` command (util-linux) is missing"
    return None
