"""Every way a job is refused says what was wrong and what to do; Ctrl-C cancels cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

import burla
from burla import protocol, remote_parallel_map

pytestmark = pytest.mark.timeout(60)


def identity(x):
    return x


@pytest.mark.parametrize(
    ("kwargs", "names"),
    [
        ({"func_cpu": 0}, "func_cpu"),
        ({"func_cpu": 1.5}, "func_cpu"),
        ({"func_ram": -1}, "func_ram"),
        ({"func_ram": "lots"}, "func_ram"),
        ({"func_gpu": "V100"}, "A100_80G"),
        ({"max_parallelism": 0}, "max_parallelism"),
        ({"image": ""}, "image"),
    ],
)
def test_bad_arguments_name_the_value(kwargs, names):
    with pytest.raises(ValueError, match=names):
        remote_parallel_map(identity, [1], **kwargs)


def test_function_must_be_callable():
    with pytest.raises(TypeError, match="callable"):
        remote_parallel_map(42, [1])


@pytest.mark.parametrize(
    ("kwargs", "reason", "says"),
    [
        ({"func_gpu": "A100"}, "gpu", "GPUs available: none"),
        ({"image": "ghcr.io/x/y:1"}, "image", "images available: (none)"),
        ({"func_ram": 100_000}, "resources", "func_ram=100000 GB"),
        ({"func_cpu": 64}, "resources", "func_cpu=64"),
    ],
)
@pytest.mark.parametrize("grow", [False, True])
def test_no_compatible_nodes_says_why_and_what_works_today(cluster, kwargs, reason, says, grow):
    with pytest.raises(burla.NoCompatibleNodes) as caught:
        remote_parallel_map(identity, [1], spinner=False, grow=grow, **kwargs)
    assert caught.value.reason == reason
    assert says in str(caught.value)
    # This cluster's coordinator has no provider, so grow=True cannot help and is never
    # advised; starting an agent that fits works.
    assert "grow" not in str(caught.value)
    assert "`burla agent --coordinator ENDPOINT --token-file FILE`" in str(caught.value)
    assert "agent0" in str(caught.value) or reason != "resources"


def test_no_nodes(tmp_path, monkeypatch):
    from daemons import Cluster

    lone = Cluster(tmp_path)
    try:
        lone.start_coordinator()
        for key, value in lone.env().items():
            monkeypatch.setenv(key, value)
        with pytest.raises(burla.NoNodes, match="Start an agent") as caught:
            remote_parallel_map(identity, [1], spinner=False)
        assert "grow" not in str(caught.value)
    finally:
        lone.stop()


def test_wrong_token_is_unauthorized(cluster, monkeypatch):
    monkeypatch.setenv("BURLA_API_KEY", "not-the-token")
    with pytest.raises(burla.Unauthorized, match="as api_key= or in BURLA_API_KEY"):
        remote_parallel_map(identity, [1], spinner=False)


def test_version_mismatch_names_both_versions(cluster, monkeypatch):
    cluster_version = protocol.PROTOCOL_VERSION
    monkeypatch.setattr(protocol, "PROTOCOL_VERSION", 999)
    with pytest.raises(burla.VersionMismatch) as caught:
        remote_parallel_map(identity, [1], spinner=False)
    assert "version 999" in str(caught.value)
    assert f"version {cluster_version} " in str(caught.value)


def test_nothing_listening_is_unreachable_after_bounded_wait(monkeypatch):
    import burla.client.api as api

    monkeypatch.setenv("BURLA_CLUSTER", "tcp://127.0.0.1:9")
    monkeypatch.setattr(api, "CONNECT_TIMEOUT_SECONDS", 1.0)
    started = time.monotonic()
    with pytest.raises(burla.ClusterUnreachable, match="127.0.0.1:9"):
        remote_parallel_map(identity, [1], spinner=False)
    assert time.monotonic() - started < 10


CANCEL_SCRIPT = """
import sys, time
from burla import remote_parallel_map, JobCanceled
def slow(x):
    print("started", x, flush=True)
    time.sleep(60)
try:
    remote_parallel_map(slow, [1, 2], spinner=False)
except JobCanceled as exc:
    print("JobCanceled:", exc, flush=True)
    sys.exit(3)
"""


def test_sigint_cancels_the_job_and_frees_its_slots(cluster):
    env = {**os.environ, **cluster.env()}
    client = subprocess.Popen([sys.executable, "-c", CANCEL_SCRIPT], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert client.stdout is not None
    started = client.stdout.readline()  # a remote call is running once its print arrives
    assert started.startswith("started"), client.stderr.read() if client.stderr else ""
    client.send_signal(signal.SIGINT)
    out, err = client.communicate(timeout=20)
    assert client.returncode == 3, err
    assert "JobCanceled" in out
    # Both slots were held by 60 s sleeps; the next job gets them back at once.
    began = time.monotonic()
    assert remote_parallel_map(identity, [1, 2, 3], spinner=False) == [1, 2, 3]
    assert time.monotonic() - began < 15


def _wait_until(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


@pytest.mark.parametrize("abort", ["too_big", "iterator_raises"])
def test_an_aborted_upload_frees_the_job_at_once(make_cluster, monkeypatch, abort):
    from burla.client import chunking

    cluster = make_cluster()
    monkeypatch.setattr(chunking, "MAX_INPUT_BYTES", 10_000)
    # Read two inputs ahead, so the third is read, and fails, only once the job is uploading.
    monkeypatch.setattr(chunking, "LOOKAHEAD_INPUTS", 2)

    def inputs():
        yield from (1, 2)
        if abort == "iterator_raises":
            raise KeyError("the inputs' own bug")
        yield b"x" * 20_000

    expected = burla.InputTooBig if abort == "too_big" else KeyError
    with pytest.raises(expected):
        remote_parallel_map(identity, inputs(), spinner=False)
    # The job was cancelled on the cluster before the error reached us: no job and no slot is
    # held (the client-silence timeout would have freed them only after 5 s).
    def freed() -> bool:
        status = cluster.status()
        return not status["jobs"] and all(n["used_cpus"] == 0 for n in status["nodes"])

    assert _wait_until(freed, 2.5), cluster.status()
