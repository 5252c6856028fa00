"""A coordinator restart keeps the cluster's nodes, and an agent that cannot reach its
coordinator says so (DESIGN §6: agents reconnect; only the embedded cluster's own stop ends them).
"""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Callable

import pytest

from burla import remote_parallel_map

pytestmark = pytest.mark.timeout(90)


def _wait_for(condition: Callable[[], object], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"not within {seconds}s: {what}"
        time.sleep(0.05)


def double(x: int) -> int:
    return x * 2


def test_a_coordinator_stopped_with_sigterm_leaves_its_agents_running_to_rejoin(
    make_cluster,
) -> None:
    cluster = make_cluster(agents=1, cpus=2)
    agent = cluster.agents[0]
    assert cluster.coordinator is not None
    cluster.coordinator.send_signal(signal.SIGTERM)
    assert cluster.coordinator.wait(timeout=15) == 0
    cluster.restart_coordinator()
    # The same agent process registers with the new coordinator: it was not told to stop.
    _wait_for(lambda: cluster.status()["nodes"], 20, "the agent registers again")
    assert agent.poll() is None
    assert "agent_stopping" not in (cluster.root / "agent0.log").read_text()
    assert remote_parallel_map(double, [1, 2, 3], spinner=False) == [2, 4, 6]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_an_agent_that_cannot_reach_its_coordinator_says_where_and_how_long(tmp_path) -> None:
    from tests.daemons import Cluster

    cluster = Cluster(tmp_path)
    (tmp_path / "token").write_text(cluster.token)
    address = f"tcp://127.0.0.1:{_free_port()}"  # nobody listens there
    agent, log = cluster._spawn(
        ["agent", "--coordinator", address, "--state-dir", str(tmp_path / "agent"),
         "--token-file", str(tmp_path / "token"), "--cpus", "1"],
        "agent",
    )
    cluster.agents.append(agent)
    try:
        _wait_for(lambda: "coordinator_unreachable" in log.read_text(), 30,
                  "the agent logs that the coordinator is unreachable")
        line = next(ln for ln in log.read_text().splitlines() if "coordinator_unreachable" in ln)
        assert address in line and '"seconds"' in line and "retrying" in line
        assert agent.poll() is None  # it keeps trying
    finally:
        cluster.stop()
