"""From inside a running call on an agent started with --sandbox (root only): own namespaces,
private /tmp, the unprivileged uid, no new privileges, rlimits, a parent-death signal, and the
agent's token and state dir out of reach."""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemons import Cluster

import burla
from burla import remote_parallel_map
from burla.agent.limits import SANDBOX_WORKDIR, runtime_paths
from burla.agent.reach import closed_ancestors
from burla.agent.sandbox import NOBODY, PRIVATE_TMP_DIRS, sandbox_supported

UNSUPPORTED = sandbox_supported()
pytestmark = [
    pytest.mark.skipif(UNSUPPORTED is not None, reason=f"sandbox unsupported: {UNSUPPORTED}"),
    pytest.mark.timeout(60),
]
PR_GET_PDEATHSIG = 2
NAMESPACES = ("pid", "mnt", "ipc")


def way_plan() -> dict[str, list[str]]:
    """The closed and private tmp dirs on the way to the runtime, each with its children on it
    (the tests may run from a venv or a clone under /tmp, or under a 0700 home)."""
    tmp_dirs = tuple(os.path.realpath(t) for t in PRIVATE_TMP_DIRS if os.path.isdir(t))
    return closed_ancestors(runtime_paths(), NOBODY, NOBODY, tmp_dirs)


def attempt(action: Any) -> dict[str, Any]:
    try:
        return {"value": action()}
    except OSError as e:
        return {"error": type(e).__name__}


def inspect(paths: dict[str, Any]) -> dict[str, Any]:
    """Everything a call can learn about its confinement (runs as the user function)."""
    import colorsys  # noqa: F401  # a stdlib module no executor pre-imports: readable as nobody
    import resource

    status = dict(line.split(":\t", 1) for line in Path("/proc/self/status").read_text()
                  .splitlines())
    pdeath = ctypes.c_int()
    ctypes.CDLL(None, use_errno=True).prctl(PR_GET_PDEATHSIG, ctypes.byref(pdeath), 0, 0, 0)
    tmp = sorted(os.listdir("/tmp"))
    closed = {d: attempt(lambda d=d: sorted(os.listdir(d))) for d in paths["closed"]}
    Path("/tmp", paths["inside_marker"]).write_text("inside")
    return {
        "ids": [os.getresuid(), os.getresgid(), os.getgroups()],
        "ns": {kind: os.readlink(f"/proc/self/ns/{kind}") for kind in NAMESPACES},
        "pid": os.getpid(),
        "proc_pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
        "tmp": tmp,
        "host_marker_visible": os.path.exists(paths["host_marker"]),
        "no_new_privs": status["NoNewPrivs"].strip(),
        "cap_eff": int(status["CapEff"], 16),
        "core": resource.getrlimit(resource.RLIMIT_CORE),
        "pdeath": pdeath.value,
        "cwd": os.getcwd(),
        "token": attempt(Path(paths["token"]).read_text),
        "state": attempt(lambda: os.listdir(paths["state"])),
        "closed": closed,
        "runtime": {p: os.path.exists(p) for p in paths["runtime"]},
        "env_values": list(os.environ.values()),
    }


def segfault(_x: Any) -> None:
    ctypes.string_at(0)


@pytest.fixture(scope="module")
def sandboxed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, Path]]:
    """An agent with --sandbox whose state dir and token sit outside /tmp, world-readable, so
    only the sandbox keeps a call from them."""
    outside = Path(tempfile.mkdtemp(prefix="burla-sandbox-test-", dir="/var/lib"))
    cluster = Cluster(tmp_path_factory.mktemp("sandboxed"))
    saved = {key: os.environ.get(key) for key in ("BURLA_CLUSTER", "BURLA_API_KEY")}
    try:
        os.chmod(outside, 0o755)
        cluster.start_coordinator()
        token = outside / "token"
        token.write_text(cluster.token)
        os.chmod(token, 0o644)
        cluster.start_agent("--sandbox", "--state-dir", str(outside / "state"),
                            "--token-file", str(token))
        os.environ.update(cluster.env())
        yield cluster, outside
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        cluster.stop()
        shutil.rmtree(outside, ignore_errors=True)


@pytest.fixture(scope="module")
def facts(sandboxed: tuple[Cluster, Path]) -> dict[str, Any]:
    cluster, outside = sandboxed
    host_marker = Path("/tmp") / f"burla-host-{uuid.uuid4().hex}"
    host_marker.write_text("host")
    paths = {"inside_marker": f"burla-inside-{uuid.uuid4().hex}", "host_marker": str(host_marker),
             "token": str(outside / "token"), "state": str(outside / "state"),
             "closed": list(way_plan()), "runtime": list(runtime_paths())}
    try:
        [result] = remote_parallel_map(inspect, [paths], spinner=False)
    finally:
        host_marker.unlink()
    result["inside_marker_on_host"] = (Path("/tmp") / paths["inside_marker"]).exists()
    return result


def test_call_has_its_own_pid_mount_and_ipc_namespaces(facts: dict[str, Any]) -> None:
    for kind in NAMESPACES:
        assert facts["ns"][kind] != os.readlink(f"/proc/self/ns/{kind}"), kind
    assert facts["pid"] == 2 and facts["proc_pids"] == [1, 2]


def test_call_has_a_private_tmp(facts: dict[str, Any]) -> None:
    way = [os.path.basename(c) for c in way_plan().get("/tmp", [])]
    assert facts["tmp"] == sorted({"burla", *way}) and facts["cwd"] == SANDBOX_WORKDIR
    assert not facts["host_marker_visible"] and not facts["inside_marker_on_host"]


def test_call_runs_unprivileged_without_new_privileges(facts: dict[str, Any]) -> None:
    assert facts["ids"] == [(NOBODY,) * 3, (NOBODY,) * 3, []]
    assert facts["no_new_privs"] == "1" and facts["cap_eff"] == 0


def test_call_has_rlimits_and_dies_with_its_parent(facts: dict[str, Any]) -> None:
    assert facts["core"] == (0, 0)
    assert facts["pdeath"] == signal.SIGKILL


def test_agent_token_and_state_dir_are_out_of_reach(
    facts: dict[str, Any], sandboxed: tuple[Cluster, Path]
) -> None:
    cluster, outside = sandboxed
    assert (outside / "token").read_text() == cluster.token, "the host view is untouched"
    assert facts["token"] == {"value": ""}, "the token file reads as /dev/null"
    assert facts["state"] == {"error": "PermissionError"}
    assert cluster.token not in facts["env_values"]


def test_closed_dirs_show_only_the_way_to_the_runtime(facts: dict[str, Any]) -> None:
    plan = way_plan()
    for closed, listing in facts["closed"].items():
        way = {os.path.basename(c) for c in plan[closed]}
        if closed == os.path.dirname(SANDBOX_WORKDIR):
            way.add(os.path.basename(SANDBOX_WORKDIR))
        assert listing == {"value": sorted(way)}, closed


def test_call_reaches_every_runtime_path(facts: dict[str, Any]) -> None:
    assert facts["runtime"] and all(facts["runtime"].values()), facts["runtime"]


def test_crash_in_the_sandbox_reports_the_executor_signal(
    sandboxed: tuple[Cluster, Path],
) -> None:
    with pytest.raises(burla.NodeDisconnected, match="signal SIGSEGV"):
        remote_parallel_map(segfault, [1], spinner=False)


def speak_then_segfault(x: int) -> None:
    os.write(1, f"last words of {x} from fd 1\n".encode())
    print(f"flushed last words of {x}", flush=True)
    ctypes.string_at(0)


def test_what_a_sandboxed_call_printed_before_it_crashed_arrives(
    sandboxed: tuple[Cluster, Path], capfd: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(burla.NodeDisconnected, match="signal SIGSEGV"):
        remote_parallel_map(speak_then_segfault, [4], spinner=False)
    out = capfd.readouterr().out
    assert "last words of 4 from fd 1\n" in out and "flushed last words of 4\n" in out, out
