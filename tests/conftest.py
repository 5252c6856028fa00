"""Fixtures: real daemons on loopback, and an isolated state dir for every test session."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from daemons import Cluster, running_cluster  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def isolated_state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Keep tests away from the user's own embedded cluster and credentials."""
    root = tmp_path_factory.mktemp("burla-home")
    saved = {k: os.environ.get(k) for k in ("BURLA_STATE_DIR", "BURLA_CONFIG_DIR")}
    os.environ["BURLA_STATE_DIR"] = str(root / "state")
    os.environ["BURLA_CONFIG_DIR"] = str(root / "config")
    for key in ("BURLA_CLUSTER", "BURLA_API_KEY", "BURLA_PARENT_JOB"):
        os.environ.pop(key, None)
    yield root
    from burla.client import local_cluster

    local_cluster.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def shared_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One coordinator and one 2-CPU agent, shared by tests that do not break things."""
    with running_cluster(tmp_path_factory.mktemp("shared-cluster")) as cluster:
        yield cluster


@pytest.fixture
def cluster(shared_cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> Cluster:
    """The shared cluster, selected for this test's calls through the environment."""
    for key, value in shared_cluster.env().items():
        monkeypatch.setenv(key, value)
    return shared_cluster


@pytest.fixture
def make_cluster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., Cluster]]:
    """Factory for a private cluster (for tests that kill or reconfigure daemons)."""
    with ExitStack() as stack:

        def make(agents: int = 1, cpus: int = 2, agent_args: tuple[str, ...] = (),
                 coordinator_state: Path | None = None,
                 coordinator_args: tuple[str, ...] = ()) -> Cluster:
            """`coordinator_state`: the coordinator's state dir (default: in the cluster's);
            `coordinator_args`: more flags for it (e.g. --provider local)."""
            root = tmp_path / f"cluster{len(stack._exit_callbacks)}"
            root.mkdir()
            made = stack.enter_context(running_cluster(root, agents, cpus, agent_args,
                                                       coordinator_state, coordinator_args))
            for key, value in made.env().items():
                monkeypatch.setenv(key, value)
            return made

        yield make
