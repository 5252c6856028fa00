"""The embedded cluster's record is reused between calls only while it still stands."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from burla.client import local_cluster
from burla.config import ClusterAddress, write_private_json


@pytest.fixture
def record(tmp_path, monkeypatch):
    monkeypatch.setenv("BURLA_STATE_DIR", str(tmp_path))
    monkeypatch.setattr(local_cluster, "_known", None)
    info = {"endpoint": "tcp://127.0.0.1:1", "token": "t", "coordinator_pid": os.getpid(),
            "agent_pid": os.getpid()}
    write_private_json(local_cluster.cluster_file(), info)
    local_cluster._remember(info)
    return info


def test_an_unchanged_record_with_live_pids_is_reused(record):
    assert local_cluster._still_known() == record


def test_a_rewritten_record_is_read_again(record):
    os.utime(local_cluster.cluster_file(), ns=(1, 1))
    assert local_cluster._still_known() is None


def test_a_removed_record_is_not_used(record):
    local_cluster.cluster_file().unlink()
    assert local_cluster._still_known() is None


def test_a_dead_daemon_voids_the_record(record, tmp_path):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True, timeout=30)
    info = dict(record, agent_pid=int(gone.stdout))
    write_private_json(local_cluster.cluster_file(), info)
    local_cluster._remember(info)
    assert local_cluster._still_known() is None


def test_another_state_dir_is_not_served_the_old_record(record, tmp_path, monkeypatch):
    monkeypatch.setenv("BURLA_STATE_DIR", str(tmp_path / "other"))
    assert local_cluster._still_known() is None


def test_each_interpreter_has_its_own_cluster_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("BURLA_STATE_DIR", str(tmp_path))
    mine = local_cluster.state_dir()
    assert mine.parent == tmp_path / "local"
    assert mine.name.startswith(f"{Path(sys.prefix).name}-py{sys.version_info[0]}."), mine.name
    for prefix, version in (("/other/venv", platform.python_version()), (sys.prefix, "2.7.18")):
        monkeypatch.setattr(sys, "prefix", prefix)
        monkeypatch.setattr(platform, "python_version", lambda v=version: v)
        local_cluster.interpreter_key.cache_clear()
        try:
            assert local_cluster.state_dir() != mine
        finally:
            local_cluster.interpreter_key.cache_clear()


def test_a_cluster_of_another_interpreter_is_not_used(record):
    running = dict(record, version=local_cluster._version(), python=local_cluster.interpreter())
    assert local_cluster._serves_this_interpreter(running)
    elsewhere = dict(running, python=dict(running["python"], prefix="/other/venv"))
    assert not local_cluster._serves_this_interpreter(elsewhere)
    older = dict(running, python=dict(running["python"], python_version="3.0.1"))
    assert not local_cluster._serves_this_interpreter(older)


def test_only_a_deliberate_stop_of_this_run_of_the_cluster_counts(record):
    address = ClusterAddress(record["endpoint"], record["token"], True, "test")
    assert local_cluster.deliberate_stop(address) is None  # never stopped on purpose
    write_private_json(local_cluster.state_dir() / local_cluster.STOPPED_FILE,
                       {"cluster": local_cluster._cluster_id("t"), "reason": "`burla local down`",
                        "at": 0.0})
    assert "stopped by `burla local down`" in (local_cluster.deliberate_stop(address) or "")
    restarted = ClusterAddress(record["endpoint"], "a new token", True, "test")
    assert local_cluster.deliberate_stop(restarted) is None
