"""The local provider: nodes as processes here, with records it lists, stops and cleans up.
The "agent" here is a process that only sleeps, so nothing registers anywhere."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from burla.coordinator.capacity import Shape
from burla.coordinator.providers import local
from burla.coordinator.providers.base import CLUSTER_LABEL, BootStep, Node, NodeRequest

pytestmark = pytest.mark.timeout(60)
PYTHON = f"{sys.version_info[0]}.{sys.version_info[1]}"
SLEEPER = (sys.executable, "-c", "import time; time.sleep(600)")


def config(state: Path, cluster: str = "c", command: tuple[str, ...] = SLEEPER
           ) -> local.LocalConfig:
    return local.LocalConfig(state, cluster, "tcp://127.0.0.1:7700", "the-token", 2, 8,
                             PYTHON, command)


@pytest.fixture
def provider(tmp_path: Path) -> Iterator[local.LocalProvider]:
    made = local.LocalProvider(config(tmp_path / "nodes"))
    yield made
    made.close()


def until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.01)


def pid_of(provider: local.LocalProvider, name: str) -> int:
    record = json.loads((provider.config.state_dir / name / local.RECORD).read_text())
    return int(record["pid"])


def test_the_catalog_offers_local_n_only_for_cpu_calls_in_its_python(tmp_path: Path) -> None:
    types = local.catalog(config(tmp_path))
    assert list(types(Shape(1, 0, None, PYTHON))) == [("local-2", 2, 8, 0)]
    assert list(types(Shape(1, 0, "A100_40G", PYTHON))) == []
    assert list(types(Shape(1, 0, None, PYTHON, "ghcr.io/x/y:1"))) == []
    assert list(types(Shape(1, 0, None, "2.7"))) == []


def test_create_starts_one_agent_per_name_with_its_flags(provider: local.LocalProvider) -> None:
    steps: list[BootStep] = []
    report = provider.create(NodeRequest("local-2", 2, names=("n-1", "n-2")), steps.append)
    assert report.error is None and [n.name for n in report.nodes] == ["n-1", "n-2"]
    assert [s.describe() for s in steps] == ["booting 2× local-2: 2 started here"]
    command = psutil.Process(pid_of(provider, "n-1")).cmdline()
    flags = dict(zip(command[3::2], command[4::2]))
    assert flags["--agent-id"] == "n-1" and flags["--coordinator"] == "tcp://127.0.0.1:7700"
    assert flags["--cpus"] == "2" and flags["--ram-gb"] == "8"
    assert Path(flags["--token-file"]).read_text() == "the-token"
    assert Path(flags["--token-file"]).stat().st_mode & 0o077 == 0
    listed = provider.list_nodes()
    assert [(n.name, n.status, n.machine_type, n.labels) for n in listed] == [
        ("n-1", "RUNNING", "local-2", {CLUSTER_LABEL: "c"}),
        ("n-2", "RUNNING", "local-2", {CLUSTER_LABEL: "c"})]


def test_delete_stops_the_process_and_removes_its_directory(provider: local.LocalProvider
                                                             ) -> None:
    [node] = provider.create(NodeRequest("local-2", 1, names=("n-1",))).nodes
    process = psutil.Process(pid_of(provider, "n-1"))
    provider.delete(node)
    assert not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    assert not (provider.config.state_dir / "n-1").exists() and provider.list_nodes() == []
    provider.delete(node)  # already gone: not an error


def test_an_agent_that_ignores_sigterm_is_killed(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local, "STOP_GRACE_SECONDS", 0.5)
    stubborn = (sys.executable, "-c",
                "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                "print('ready', flush=True); time.sleep(600)")
    provider = local.LocalProvider(config(tmp_path, command=stubborn))
    [node] = provider.create(NodeRequest("local-2", 1, names=("n-1",))).nodes
    log = tmp_path / "n-1" / "agent.log"
    until(lambda: "ready" in log.read_text())  # its SIGTERM handler is set once it printed
    process = psutil.Process(pid_of(provider, "n-1"))
    provider.delete(node)
    assert not process.is_running() or process.status() == psutil.STATUS_ZOMBIE


def test_a_dead_agent_is_listed_terminated(provider: local.LocalProvider) -> None:
    provider.create(NodeRequest("local-2", 1, names=("n-1",)))
    psutil.Process(pid_of(provider, "n-1")).kill()
    provider._children["n-1"].wait(timeout=10)
    assert [(n.name, n.status) for n in provider.list_nodes()] == [("n-1", "TERMINATED")]


def test_another_clusters_nodes_are_neither_listed_nor_deleted(tmp_path: Path) -> None:
    state = tmp_path / "nodes"
    ours, theirs = local.LocalProvider(config(state)), local.LocalProvider(config(state, "d"))
    try:
        [their_node] = theirs.create(NodeRequest("local-2", 1, names=("d-1",))).nodes
        assert ours.list_nodes() == []
        with pytest.raises(ValueError, match="does not carry the label burla-cluster=c"):
            ours.delete(their_node)
        unlabelled = Node("d-1", local.ZONE, "RUNNING", "local-2", {})
        with pytest.raises(ValueError, match="refusing to delete local node d-1"):
            ours.delete(unlabelled)
        ours.close()
        assert [n.status for n in theirs.list_nodes()] == ["RUNNING"]
    finally:
        theirs.close()


def test_a_planted_record_of_the_cluster_is_found_and_stopped(provider: local.LocalProvider
                                                              ) -> None:
    sleeper = subprocess.Popen(SLEEPER)
    try:
        directory = provider.config.state_dir / "planted"
        directory.mkdir()
        (directory / local.RECORD).write_text(json.dumps({
            "name": "planted", "cluster": "c", "machine_type": "local-2", "pid": sleeper.pid,
            "started": psutil.Process(sleeper.pid).create_time()}))
        [node] = provider.list_nodes()
        assert (node.name, node.status) == ("planted", "RUNNING")
        provider.delete(node)
        assert sleeper.wait(timeout=10) != 0 and not directory.exists()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_record_whose_pid_was_reused_is_not_that_process(provider: local.LocalProvider
                                                           ) -> None:
    directory = provider.config.state_dir / "old"
    directory.mkdir()
    (directory / local.RECORD).write_text(json.dumps({
        "name": "old", "cluster": "c", "machine_type": "local-2", "pid": 1, "started": 1.0}))
    assert [(n.name, n.status) for n in provider.list_nodes()] == [("old", "TERMINATED")]
    provider.delete(provider.list_nodes()[0])  # stops nothing (pid 1 is not it), cleans up
    assert not directory.exists() and psutil.pid_exists(1)


def test_a_machine_type_it_does_not_have_is_an_error(provider: local.LocalProvider) -> None:
    report = provider.create(NodeRequest("n2-standard-8", 1, names=("n-1",)))
    assert report.nodes == () and "boots only local-2, not n2-standard-8" in str(report.error)


def test_close_stops_every_node(provider: local.LocalProvider) -> None:
    provider.create(NodeRequest("local-2", 2, names=("n-1", "n-2")))
    processes = [psutil.Process(pid_of(provider, n)) for n in ("n-1", "n-2")]
    provider.close()
    assert provider.list_nodes() == []
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in processes)
