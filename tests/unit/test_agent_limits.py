"""From a call slot's shape to an executor's limits, GPU, environment and sandbox; and the
cgroup groups (dynamic-RAM budget) on a fake cgroup2 tree."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from burla import daemon_cli
from burla.agent.cgroups import Limits, NoneBackend
from burla.agent.config import DEFAULT_EXECUTOR_PIDS_MAX, AgentConfig, default_memory_budget
from burla.agent.gpus import fake_gpus
from burla.agent.limits import (
    DYNAMIC_GROUP,
    GIB,
    NO_GPU_RULE,
    SANDBOX_WORKDIR,
    LimitPolicy,
    base_sandbox,
    cgroup_root_name,
    executor_pids_max,
    gpu_device_rules,
    runtime_paths,
)
from burla.agent.reach import closed_ancestors
from burla.agent.sandbox import NOBODY
from tests.unit.test_cgroups_v2 import Factory, make_backend, read  # noqa: F401

pytestmark = pytest.mark.timeout(10)
GPUS = tuple(fake_gpus("A100_40G:2"))


@pytest.fixture(scope="module")
def none_backend() -> NoneBackend:
    return NoneBackend("tests")


def test_integer_func_ram_is_a_hard_limit_and_dynamic_goes_under_the_budget_group(
    none_backend: NoneBackend,
) -> None:
    policy = LimitPolicy(none_backend, memory_budget_bytes=GIB)
    assert policy.limits((2, 3, None), None) == (Limits(cpus=2, memory_bytes=3 * GIB), None)
    assert policy.limits((1, 0, None), None) == (Limits(cpus=1), DYNAMIC_GROUP)


def test_gpu_node_gives_each_executor_its_gpu_and_denies_the_others(
    none_backend: NoneBackend,
) -> None:
    policy = LimitPolicy(none_backend, gpus=GPUS)
    limits, _ = policy.limits((1, 0, "A100_40G"), GPUS[1])
    assert "c 195:1 rwm" in limits.devices and "c 195:0 rwm" not in limits.devices
    assert policy.env(GPUS[1]) == {"CUDA_VISIBLE_DEVICES": "GPU-fake-a100_40g-1"}
    assert policy.env(None) == {"CUDA_VISIBLE_DEVICES": ""}  # CPU calls see no GPU
    assert policy.limits((1, 0, None), None)[0].devices == (NO_GPU_RULE,)
    assert gpu_device_rules(None) == (NO_GPU_RULE,)


def test_cpu_node_sets_no_gpu_env_and_leaves_devices_alone(none_backend: NoneBackend) -> None:
    policy = LimitPolicy(none_backend)
    assert policy.env(None) == {}
    assert policy.limits((1, 0, None), None)[0].devices == ()
    assert policy.sandbox_fields(None) is None


def test_sandbox_hides_state_and_token_and_exposes_the_runtime(
    tmp_path: Path, none_backend: NoneBackend
) -> None:
    token = tmp_path / "token"
    token.write_text("secret")
    spec = base_sandbox(tmp_path, token)
    assert spec.hidden_paths == (str(tmp_path.resolve()), str(token.resolve()))
    assert spec.workdir == SANDBOX_WORKDIR and spec.uid == NOBODY
    assert set(runtime_paths()) <= set(spec.exposed_paths)
    fields = LimitPolicy(none_backend, sandbox=spec).sandbox_fields(None)
    assert fields is not None and fields["hidden_paths"] == spec.hidden_paths
    assert LimitPolicy(none_backend, sandbox=spec).env(None)["HOME"] == SANDBOX_WORKDIR


def test_closed_ancestors_lists_the_way_back_through_dirs_the_uid_cannot_search(
    tmp_path: Path,
) -> None:
    closed = tmp_path / "home"
    (closed / "venv" / "lib").mkdir(parents=True)
    (closed / "secret").mkdir()
    os.chmod(closed, 0o700)
    os.chmod(tmp_path, 0o755)
    plan = closed_ancestors((str(closed / "venv" / "lib"), "/no/such/path"), NOBODY, NOBODY)
    assert plan[str(closed)] == [str(closed / "venv")]
    assert all(not d.startswith(str(closed / "venv")) for d in plan)
    os.chmod(closed, 0o755)
    assert str(closed) not in closed_ancestors((str(closed / "venv"),), NOBODY, NOBODY)
    assert stat.S_IMODE(os.stat(closed).st_mode) == 0o755


def test_cgroup_root_is_stable_per_state_dir_and_distinct_between_agents(tmp_path: Path) -> None:
    assert cgroup_root_name(tmp_path / "a") == cgroup_root_name(tmp_path / "a")
    assert cgroup_root_name(tmp_path / "a") != cgroup_root_name(tmp_path / "b")
    assert cgroup_root_name(tmp_path).startswith("burla-")


def test_default_memory_budget_keeps_a_reserve() -> None:
    assert default_memory_budget(16 * GIB) == 16 * GIB - int(1.6 * GIB)
    assert default_memory_budget(4 * GIB) == 3 * GIB
    assert 0 < default_memory_budget() < os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def test_v2_group_caps_memory_without_oom_group_and_holds_executors(
    make_backend: Factory,  # noqa: F811
) -> None:
    backend, kernel = make_backend()
    group = backend.create_group(DYNAMIC_GROUP, 2 * GIB)
    path = backend.root / DYNAMIC_GROUP
    assert read(path / "memory.max") == str(2 * GIB)
    assert read(path / "memory.oom.group") == "0"  # one OOM kills one executor, not all
    assert read(path / "cgroup.subtree_control") == "cpu memory pids"
    child = backend.create("x1", Limits(cpus=1), parent=DYNAMIC_GROUP)
    child.add_process(100)
    assert kernel.procs(path / "x1") == [100]
    assert backend.cleanup_stale() == 1  # the group, after its child
    assert not path.exists() and kernel.killed == [100]
    backend.remove_root()
    assert not backend.root.exists()
    group.remove()  # already gone: nothing to do


def test_every_executor_gets_the_agents_pid_limit_on_v2(make_backend: Factory) -> None:  # noqa: F811
    backend, _ = make_backend()
    policy = LimitPolicy(backend, memory_budget_bytes=GIB,
                         pids_max=executor_pids_max(DEFAULT_EXECUTOR_PIDS_MAX, backend))
    backend.create_group(DYNAMIC_GROUP, GIB)
    for name, shape in (("fixed", (1, 2, None)), ("dynamic", (1, 0, None))):
        limits, parent = policy.limits(shape, None)
        backend.create(name, limits, parent)
    assert read(backend.root / "fixed" / "pids.max") == str(DEFAULT_EXECUTOR_PIDS_MAX)
    assert read(backend.root / DYNAMIC_GROUP / "dynamic" / "pids.max") == "4096"


def test_without_a_pids_controller_executors_still_start_and_the_agent_says_so(
    make_backend: Factory,  # noqa: F811
) -> None:
    backend, _ = make_backend(controllers="cpu memory")
    with capture_logs() as logs:
        pids = executor_pids_max(DEFAULT_EXECUTOR_PIDS_MAX, backend)
    assert pids is None and [e["event"] for e in logs] == ["executor_pids_not_limited"]
    limits, _ = LimitPolicy(backend, pids_max=pids).limits((1, 2, None), None)
    backend.create("e1", limits)  # asking for pids.max here would fail
    assert not (backend.root / "e1" / "pids.max").exists()
    with capture_logs() as logs:
        assert executor_pids_max(0, NoneBackend("tests")) is None  # 0: no limit asked
        assert executor_pids_max(64, NoneBackend("tests")) is None  # none said it already
    assert [e["event"] for e in logs] == ["cgroup_limits_not_enforced"] * 2


def test_the_pid_limit_option_is_checked_and_its_help_names_the_default(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(ValueError, match="at least 16 .* got 3"):
        AgentConfig("tcp://127.0.0.1:1", "token", tmp_path, executor_pids_max=3)
    assert AgentConfig("tcp://127.0.0.1:1", "token", tmp_path).executor_pids_max == 4096
    args = ["agent", "--coordinator", "tcp://10.0.0.2:7700", "--state-dir", str(tmp_path)]
    with pytest.raises(SystemExit):
        daemon_cli.parser().parse_args([*args, "--executor-pids-max", "3"])
    error = capsys.readouterr().err
    assert "--executor-pids-max: 3 leaves an executor too few" in error and "--help" in error
    assert daemon_cli.parser().parse_args([*args, "--executor-pids-max", "0"]
                                          ).executor_pids_max == 0
    with pytest.raises(SystemExit):
        daemon_cli.parser().parse_args(["agent", "--help"])
    assert f"default {DEFAULT_EXECUTOR_PIDS_MAX}" in " ".join(capsys.readouterr().out.split())
