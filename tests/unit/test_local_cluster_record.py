"""The embedded cluster's record is reused between calls only while it still stands."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from burla.client import local_cluster
from burla.config import write_private_json


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
