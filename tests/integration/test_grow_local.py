"""grow=True through `remote_parallel_map` with the local provider: a coordinator with no
agents boots local agent processes for a job, within its caps, and deletes them when idle,
when they never register, or when the reaper finds one it does not know."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
from typer.testing import CliRunner

import burla
from burla import remote_parallel_map
from burla.cli import app
from burla.coordinator.providers import local
from tests.daemons import Cluster

pytestmark = pytest.mark.timeout(120)
LOCAL = ("--provider", "local", "--local-node-cpus", "1")
SLEEPER = f"{sys.executable} -c 'import time; time.sleep(600)'"


def until(condition: Callable[[], Any], timeout: float = 60.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.05)
    return value


def booted(cluster: Cluster) -> list[str]:
    """The names of the nodes growth asked the provider for, in order."""
    return [name for e in cluster.events("boot_requested") for name in e["names"]]


def registered(cluster: Cluster) -> list[str]:
    """The nodes that registered, in order (each local agent's id is its node's name)."""
    return [e["agent"] for e in cluster.events("node_added")]


def node_dirs(cluster: Cluster) -> list[str]:
    nodes = cluster.state_dir / "local-nodes"
    return sorted(p.name for p in nodes.iterdir() if p.is_dir()) if nodes.exists() else []


def double(x: int) -> int:
    print(f"working on {x}")
    return x * 2


def test_from_zero_nodes_grow_boots_within_the_cap_runs_and_deletes_idle_nodes(
        make_cluster: Callable[..., Cluster], capfd: pytest.CaptureFixture[str]) -> None:
    cluster = make_cluster(agents=0, coordinator_args=(
        *LOCAL, "--max-nodes", "2", "--node-idle-timeout", "1"))
    assert cluster.status()["nodes"] == []

    assert remote_parallel_map(double, range(6), grow=True, spinner=False) == [
        x * 2 for x in range(6)]

    out = capfd.readouterr().out
    assert all(f"working on {x}\n" in out for x in range(6)), out
    nodes = booted(cluster)
    assert nodes == ["burla-burla-1", "burla-burla-2"], cluster.logs()  # --max-nodes 2
    # The job ran on what had joined (perhaps one node only, if it was that quick).
    assert set(registered(cluster)) <= set(nodes)
    # Idle for --node-idle-timeout: deleted, their processes gone, their directories too.
    until(lambda: cluster.status()["nodes"] == [] and node_dirs(cluster) == [],
          what="the idle nodes deleted")
    until(lambda: {e["node"] for e in cluster.events("node_deleted")} == set(nodes))
    assert not [p for p in psutil.process_iter(["cmdline"])
                if "burla-burla-1" in " ".join(p.info["cmdline"] or [])]


def test_max_nodes_one_boots_one_node_and_min_nodes_keeps_it(
        make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(agents=0, coordinator_args=(
        *LOCAL, "--max-nodes", "1", "--min-nodes", "1", "--node-idle-timeout", "0.5"))

    assert remote_parallel_map(double, range(5), grow=True, spinner=False) == [
        0, 2, 4, 6, 8]

    assert booted(cluster) == ["burla-burla-1"]
    # Idle past the timeout, it stays: --min-nodes 1.
    until(lambda: cluster.status()["growth"]["grown"] == ["burla-burla-1"])
    idle_since = time.monotonic()
    until(lambda: time.monotonic() - idle_since > 2, what="two idle-timeouts")
    assert [n["agent_id"] for n in cluster.status()["nodes"]] == ["burla-burla-1"]
    assert cluster.events("node_delete") == []


def wait_for_all(marker: str, calls: int) -> str:
    """Returns only once `calls` calls run at once (each leaves a marker in one folder)."""
    folder = Path(marker).parent
    Path(marker).touch()
    deadline = time.monotonic() + 60
    while len(list(folder.iterdir())) < calls:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(list(folder.iterdir()))} of {calls} calls ran at "
                               f"once")
        time.sleep(0.05)
    return Path(marker).name


def test_a_growing_jobs_calls_spread_over_the_nodes_that_join(
        make_cluster: Callable[..., Cluster], tmp_path: Path) -> None:
    """Its inputs are cut, and its first node is sent work, for the nodes still booting: no
    call waits behind another on the node that joined first."""
    cluster = make_cluster(agents=0, coordinator_args=LOCAL)
    markers = tmp_path / "markers"
    markers.mkdir()
    inputs = [(str(markers / f"call{i}"), 3) for i in range(3)]
    assert remote_parallel_map(wait_for_all, inputs, grow=True, spinner=False) == [
        "call0", "call1", "call2"]
    assert sorted(registered(cluster)) == ["burla-burla-1", "burla-burla-2", "burla-burla-3"]


def test_two_growing_jobs_at_once_boot_for_their_sum_and_never_double_book(
        make_cluster: Callable[..., Cluster], tmp_path: Path) -> None:
    """Both jobs' calls must run at once, so each call needs a node of its own."""
    cluster = make_cluster(agents=0, coordinator_args=LOCAL)
    markers = tmp_path / "markers"
    markers.mkdir()
    results: dict[str, Any] = {}

    def job(name: str) -> None:
        inputs = [(str(markers / f"{name}{i}"), 4) for i in range(2)]
        try:
            results[name] = remote_parallel_map(wait_for_all, inputs, grow=True, spinner=False)
        except Exception as exc:
            results[name] = exc

    threads = [threading.Thread(target=job, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=100)
    assert results == {"a": ["a0", "a1"], "b": ["b0", "b1"]}, cluster.logs()
    # Four calls at once on 1-CPU nodes: four nodes, booted once for the two jobs' sum.
    assert sorted(booted(cluster)) == [f"burla-burla-{n}" for n in (1, 2, 3, 4)]
    assert sorted(registered(cluster)) == sorted(booted(cluster))


def test_a_node_whose_agent_never_registers_is_deleted_at_the_boot_timeout(
        make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(agents=0, coordinator_args=(
        *LOCAL, "--boot-timeout", "6", "--local-node-command", SLEEPER))
    outcome: dict[str, BaseException] = {}

    def call() -> None:
        try:
            remote_parallel_map(double, [1], grow=True, spinner=False)
        except BaseException as exc:
            outcome["error"] = exc

    caller = threading.Thread(target=call)
    caller.start()
    # While it boots, `burla status` shows it.
    booting = until(lambda: cluster.status()["growth"]["booting"], what="a booting node")
    assert [(b["name"], b["machine_type"]) for b in booting] == [("burla-burla-1", "local-1")]
    [job] = until(lambda: [j for j in cluster.status()["jobs"]
                           if j["growth"] == "booting 1× local-1: 1 started here"])
    assert job["grow"] and job["slots"] == 0
    shown = CliRunner().invoke(app, ["status"], env=cluster.env())
    assert shown.exit_code == 0, shown.output
    assert "grows with the local provider, cluster burla" in shown.output
    assert "booting burla-burla-1 (local-1), " in shown.output
    assert "0 slots; booting 1× local-1: 1 started here" in shown.output  # the job's line
    [sleeper] = until(lambda: [p for p in psutil.process_iter(["cmdline"])
                               if "burla-burla-1" in " ".join(p.info["cmdline"] or [])])
    caller.join(timeout=60)

    error = outcome["error"]
    assert isinstance(error, burla.NoCompatibleNodes) and error.reason == "grow", error
    assert "none could be booted: VM burla-burla-1 (local-1): its agent did not register " \
           "within --boot-timeout=6s" in str(error)
    sleeper.wait(timeout=30)  # the delete that came with the timeout stops it
    until(lambda: node_dirs(cluster) == [], what="its directory removed")


def plant(cluster: Cluster, name: str, label: str) -> subprocess.Popen[bytes]:
    """A local node record of cluster `label`, made by nobody this coordinator knows."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    folder = cluster.state_dir / "local-nodes" / name
    folder.mkdir(parents=True)
    (folder / local.RECORD).write_text(json.dumps({
        "name": name, "cluster": label, "machine_type": "local-1", "pid": process.pid,
        "started": psutil.Process(process.pid).create_time()}))
    return process


def test_the_reaper_deletes_an_unknown_node_of_the_cluster_and_spares_another_clusters(
        make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(agents=0, coordinator_args=(*LOCAL, "--reap-interval", "0.3"))
    until(lambda: cluster.status()["growth"]["listed"], what="the first listing")
    ours, theirs = plant(cluster, "burla-burla-77", "burla"), plant(cluster, "x-1", "other")
    try:
        assert ours.wait(timeout=30) != 0  # stopped by the reaper
        until(lambda: node_dirs(cluster) == ["x-1"], what="the unknown node's directory gone")
        [deleted] = cluster.events("node_deleted")
        assert deleted["node"] == "burla-burla-77" and "does not know it" in deleted["reason"]
        assert theirs.poll() is None
    finally:
        for process in (ours, theirs):
            process.kill()
            process.wait()


def test_grow_false_never_boots_and_is_told_grow_true_would(
        make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(agents=0, coordinator_args=LOCAL)
    with pytest.raises(burla.NoNodes) as caught:
        remote_parallel_map(double, [1], spinner=False)
    assert "Or pass grow=True: this cluster can boot nodes for it (grow=True can boot " \
           "local-1 (1 calls each))" in str(caught.value)
    # A shape no local node fits: grow=True is refused too, saying why.
    with pytest.raises(burla.NoNodes) as caught:
        remote_parallel_map(double, [1], func_gpu="A100", grow=True, spinner=False)
    assert "grow=True cannot help here: no machine type this cluster can boot fits one call " \
           "of func_cpu=1, func_ram='dynamic', func_gpu='A100_40G'" in str(caught.value)
    assert cluster.events("boot") == [] and node_dirs(cluster) == []
