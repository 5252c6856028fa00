"""grow=True through `remote_parallel_map` with the GCE provider, against the fake Compute API.

The coordinator runs the real google-cloud-compute client. Where a test needs a VM to "boot",
the fake's hook starts a plain local agent under the instance name, with the settings the
coordinator put in the VM's metadata (no namespaces here: tests/fakes/vms.py boots real ones).
"""

from __future__ import annotations

import fcntl
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import burla
from burla import remote_parallel_map
from burla.coordinator.providers.base import CLUSTER_LABEL
from tests.daemons import Cluster
from tests.fakes.compute import FakeCompute, FakeVm, VmHooks

pytestmark = pytest.mark.timeout(120)
CLUSTER = "testc"
SCRIPT = "#!/bin/sh\n# the startup script the VMs get\n"
PYTHON = f"{sys.version_info[0]}.{sys.version_info[1]}"


class AgentHooks(VmHooks):
    """A booted VM becomes a local `burla agent` with the VM's metadata; a gone VM's agent
    is stopped. Until `gate` is set, a booted VM's agent waits to start (a slow boot)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.start_agents = True
        self.gate = threading.Event()
        self.gate.set()
        self.agents: dict[str, subprocess.Popen[bytes]] = {}
        self.booted_vms: list[FakeVm] = []

    def booted(self, vm: FakeVm) -> None:
        self.booted_vms.append(vm)
        if not self.start_agents or not self.gate.wait(60):
            return
        cpus = vm.machine_type.rsplit("-", 1)[-1]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BURLA_", "NOTIFY"))}
        with open(self.root / f"{vm.name}.log", "ab") as log:
            self.agents[vm.name] = subprocess.Popen(
                [sys.executable, "-m", "burla", "agent", "--coordinator",
                 vm.metadata["burla-coordinator"], "--token", vm.metadata["burla-token"],
                 "--agent-id", vm.name, "--cpus", cpus, "--state-dir",
                 str(self.root / vm.name)], stdout=log, stderr=log, env=env,
                stdin=subprocess.DEVNULL)

    def gone(self, vm: FakeVm, preempted: bool) -> None:
        agent = self.agents.pop(vm.name, None)
        if agent is not None:
            agent.send_signal(signal.SIGKILL if preempted else signal.SIGTERM)
            agent.wait(timeout=30)

    def stop(self) -> None:
        for agent in self.agents.values():
            agent.kill()
            agent.wait()


@pytest.fixture
def hooks(tmp_path: Path) -> Iterator[AgentHooks]:
    made = AgentHooks(tmp_path)
    yield made
    made.stop()


@pytest.fixture
def fake(hooks: AgentHooks) -> Iterator[FakeCompute]:
    server = FakeCompute(hooks=hooks).start()
    yield server
    server.close()


@pytest.fixture
def gce_cluster(fake: FakeCompute, make_cluster: Callable[..., Cluster],
                tmp_path: Path) -> Callable[..., Cluster]:
    script = tmp_path / "startup.sh"
    script.write_text(SCRIPT)

    def make(*extra: str) -> Cluster:
        return make_cluster(agents=0, coordinator_args=(
            "--provider", "gce", "--gce-project", fake.project, "--gce-region", "us-central1",
            "--gce-api-endpoint", fake.url, "--gce-startup-script", str(script),
            "--cluster-name", CLUSTER, *extra))

    return make


def until(condition: Callable[[], Any], timeout: float = 60.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.05)
    return value


def no_vms(fake: FakeCompute) -> bool:
    return fake.vms() == []


def double(x: int) -> int:
    print(f"working on {x}")
    return x * 2


def test_grow_boots_a_labelled_vm_whose_agent_runs_the_job_and_deletes_it_when_idle(
        gce_cluster: Callable[..., Cluster], fake: FakeCompute, hooks: AgentHooks,
        capfd: pytest.CaptureFixture[str]) -> None:
    cluster = gce_cluster("--node-idle-timeout", "1")

    assert remote_parallel_map(double, [1, 2], grow=True, spinner=False) == [2, 4]

    out = capfd.readouterr().out
    assert "working on 1\n" in out and "working on 2\n" in out
    assert fake.calls["instances.insert"] == 1 and fake.calls["instances.bulkInsert"] == 0
    [vm] = hooks.booted_vms
    assert vm.name == f"burla-{CLUSTER}-1" and vm.machine_type == "n2-standard-2"
    assert vm.labels[CLUSTER_LABEL] == CLUSTER
    assert vm.metadata == {
        "burla-coordinator": cluster.endpoint, "burla-token": cluster.token,
        "startup-script": SCRIPT, "burla-version": burla.__version__, "burla-python": PYTHON}
    assert [(call, bool(request_id)) for call, request_id in fake.request_log][:1] == [
        ("insert", True)]
    # Idle past --node-idle-timeout: the VM is deleted, and its agent with it.
    assert fake.wait_until(no_vms, timeout=60), cluster.logs()
    until(lambda: cluster.status()["nodes"] == [], what="the deleted node forgotten")


def test_many_nodes_go_through_one_bulk_insert_under_growths_names(
        gce_cluster: Callable[..., Cluster], fake: FakeCompute, hooks: AgentHooks) -> None:
    hooks.start_agents = False  # they never register: the boot timeout deletes them
    cluster = gce_cluster("--boot-timeout", "3")

    with pytest.raises(burla.NoCompatibleNodes) as caught:
        remote_parallel_map(double, range(4), func_cpu=96, grow=True, spinner=False)

    assert fake.calls["instances.bulkInsert"] == 1 and fake.calls["instances.insert"] == 0
    names = sorted(vm.name for vm in hooks.booted_vms)
    assert names == [f"burla-{CLUSTER}-{n}" for n in (1, 2, 3, 4)]
    assert all(vm.labels[CLUSTER_LABEL] == CLUSTER for vm in hooks.booted_vms)
    assert caught.value.reason == "grow"
    assert "its agent did not register within --boot-timeout=3s" in str(caught.value)
    assert fake.wait_until(no_vms, timeout=60), cluster.logs()


def double_once_open(gate: str, x: int) -> int:
    deadline = time.monotonic() + 60
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.02)
    return x * 2


def test_a_slow_cloud_api_never_delays_a_running_jobs_results(
        gce_cluster: Callable[..., Cluster], fake: FakeCompute, hooks: AgentHooks,
        tmp_path: Path) -> None:
    hooks.start_agents = False
    fake.slow(pending_s=600)  # every operation stays PENDING: its boot waits on the cloud
    cluster = gce_cluster()
    cluster.start_agent(cpus=2)  # a node of its own, which the job starts on at once
    gate = tmp_path / "the boot has begun"
    inputs = [(str(gate), x) for x in range(20)]
    results: list[Any] = []
    job = threading.Thread(target=lambda: results.append(remote_parallel_map(
        double_once_open, inputs, grow=True, spinner=False)))
    job.start()
    # Its calls wait until growth's boot is under way; then they finish, and so does the job.
    asked = ("instances.insert", "instances.bulkInsert")
    assert fake.wait_until(lambda f: any(f.calls[call] for call in asked), timeout=60), \
        cluster.logs()
    gate.touch()
    job.join(timeout=60)

    assert results == [[x * 2 for x in range(20)]]
    # It finished while the VMs booted for it were still on their way.
    assert fake.vms() == []
    assert cluster.status()["growth"]["booting"], cluster.logs()
    # And the coordinator stops at once, its boots given up (the next start's reaper finds
    # what they made).
    cluster.stop()
    assert cluster.coordinator is not None and cluster.coordinator.returncode == 0


def test_a_quota_error_fails_the_job_naming_the_quota(
        gce_cluster: Callable[..., Cluster], fake: FakeCompute) -> None:
    fake.exceed_quota("CPUS", 24)
    gce_cluster()

    with pytest.raises(burla.NoCompatibleNodes) as caught:
        remote_parallel_map(double, [1], grow=True, spinner=False)

    message = str(caught.value)
    assert caught.value.reason == "grow"
    assert "Compute Engine quota 'CPUS' is exhausted in us-central1 (limit 24)" in message
    assert "Raise the 'CPUS' quota" in message
    assert fake.vms() == []


def test_the_reaper_deletes_unknown_labelled_vms_and_spares_the_rest(
        gce_cluster: Callable[..., Cluster], fake: FakeCompute) -> None:
    zone = "us-central1-a"
    fake.add_vm(f"burla-{CLUSTER}-5", zone, {CLUSTER_LABEL: CLUSTER})  # a previous run's
    fake.add_vm(f"burla-{CLUSTER}-6", zone, {CLUSTER_LABEL: CLUSTER}, status="TERMINATED")
    cluster = gce_cluster("--reap-interval", "0.3")
    # At start: the stopped one is deleted, the running one adopted (its agent may come back).
    assert fake.wait_until(lambda f: f"burla-{CLUSTER}-6" not in {v.name for v in f.vms()},
                           timeout=60), cluster.logs()
    until(lambda: cluster.status()["growth"]["listed"], what="the first listing")
    booting = [b["name"] for b in cluster.status()["growth"]["booting"]]
    assert booting == [f"burla-{CLUSTER}-5"]
    # Later: a labelled VM nobody here made is deleted; others' VMs are left alone.
    fake.add_vm(f"burla-{CLUSTER}-99", zone, {CLUSTER_LABEL: CLUSTER})
    fake.add_vm("someone-elses", zone, {})
    fake.add_vm("other-cluster-1", zone, {CLUSTER_LABEL: "other"})
    assert fake.wait_until(lambda f: f"burla-{CLUSTER}-99" not in {v.name for v in f.vms()},
                           timeout=60), cluster.logs()
    assert sorted(v.name for v in fake.vms()) == [f"burla-{CLUSTER}-5", "other-cluster-1",
                                                  "someone-elses"]


ON_A_TERMINAL = '''
import sys
from burla import remote_parallel_map

def double(x):
    return x * 2

print("result", remote_parallel_map(double, [1, 2], grow=True))
'''
COLUMNS = 200


def test_a_zone_failover_shows_on_the_spinner_and_in_status(
        gce_cluster: Callable[..., Cluster], fake: FakeCompute, hooks: AgentHooks,
        tmp_path: Path) -> None:
    fake.stockout("us-central1-a")
    hooks.gate.clear()  # the VM made in us-central1-b boots slowly, until the test has looked
    cluster = gce_cluster("--gce-zones", "us-central1-a,us-central1-b")
    script = tmp_path / "on_a_terminal.py"
    script.write_text(ON_A_TERMINAL)
    words = "booting 1× n2-standard-2: us-central1-a exhausted, trying us-central1-b"
    seen: dict[str, Any] = {}

    def look(screen: str) -> None:
        if words in screen and "status" not in seen:
            seen["status"] = cluster.status()
            hooks.gate.set()

    transcript = _run_on_a_pty(script, {**os.environ, **cluster.env()}, look)

    assert words in transcript, transcript
    assert "result [2, 4]" in transcript
    [booting] = seen["status"]["growth"]["booting"]
    assert booting["name"] == f"burla-{CLUSTER}-1" and booting["machine_type"] == \
        "n2-standard-2"
    assert booting["note"].startswith("us-central1-a exhausted, trying us-central1-b")
    [job] = seen["status"]["jobs"]
    assert job["growth"].startswith(words)
    [vm] = hooks.booted_vms
    assert vm.zone == "us-central1-b"


def _run_on_a_pty(script: Path, env: dict[str, str], look: Callable[[str], None]) -> str:
    """Run `script` on a wide pseudo-terminal; `look` sees the transcript as it grows."""
    pid, master = pty.fork()
    if pid == 0:  # the child: its stdin, stdout and stderr are the terminal
        fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 24, COLUMNS, 0, 0))
        os.execve(sys.executable, [sys.executable, str(script)], {**env, "TERM": "xterm"})
    transcript = b""
    deadline = time.monotonic() + 90
    try:
        while time.monotonic() < deadline:
            if not select.select([master], [], [], 0.1)[0]:
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child is gone and the terminal drained
                break
            if not data:
                break
            transcript += data
            look(transcript.decode(errors="replace"))
    finally:
        os.close(master)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, transcript.decode(errors="replace")
    return transcript.decode(errors="replace")
