"""A daemon's bad flag is one line that names the value and shows the expected form."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize(("args", "named", "expected"), [
    (["coordinator", "--endpoint", "tcp://127.0.0.1:99999"], "99999", "0-65535"),
    (["coordinator", "--endpoint", "tcp://127.0.0.1:-1"], "-1", "0-65535"),
    (["coordinator", "--endpoint", "notaurl"], "'notaurl'", "tcp://HOST:PORT"),
    (["agent", "--coordinator", "notaurl"], "'notaurl'", "tcp://HOST:PORT"),
    (["agent", "--coordinator", "tcp://10.0.0.2:0"], "port 0", "1-65535"),
    (["coordinator", "--provider", "local", "--max-nodes", "-1"], "'-1'", ">= 0"),
    (["coordinator", "--max-nodes", "3"], "--max-nodes", "needs --provider"),
])
def test_a_bad_endpoint_is_refused_in_one_line(tmp_path, args, named, expected) -> None:
    done = subprocess.run([sys.executable, "-m", "burla", *args, "--state-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert named in lines[0] and expected in lines[0] and "--help" in lines[0], lines[0]
    assert not (tmp_path / "jobs.sqlite3").exists()


def test_a_daemon_flag_error_advises_a_help_that_exists(tmp_path) -> None:
    done = subprocess.run([sys.executable, "-m", "burla", "agent", "--help"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and "--coordinator" in done.stdout
