"""Two Python environments get two embedded clusters: each call runs in the interpreter and
packages of the venv that made it, never silently in another one's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)
ROOT = Path(__file__).resolve().parents[2]

# Returns where the call ran, and whether it could import a module only the other venv has.
WHERE = """
import json
from burla import remote_parallel_map
def where(_):
    import sys
    try:
        import only_in_the_other_venv  # noqa: F401
        found = True
    except ModuleNotFoundError:
        found = False
    return {"prefix": sys.prefix, "executable": sys.executable, "found": found}
print(json.dumps(remote_parallel_map(where, [0], spinner=False)[0]))
"""


@pytest.fixture
def home(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("BURLA_CLUSTER", "BURLA_API_KEY", "BURLA_PARENT_JOB", "PYTHONPATH")}
    env["BURLA_STATE_DIR"] = str(tmp_path / "state")
    env["BURLA_CONFIG_DIR"] = str(tmp_path / "config")
    yield env
    subprocess.run([sys.executable, "-m", "burla", "local", "down", "--all"], env=env,
                   capture_output=True, timeout=60)


def other_venv(tmp_path: Path) -> Path:
    """A second venv that has burla (this checkout and its dependencies, through a .pth file)
    and one module of its own; returns its python."""
    venv = tmp_path / "other-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=60)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; "
                           "print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True, timeout=30).stdout.strip()
    ours = [str(ROOT), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    (Path(site) / "burla-under-test.pth").write_text("\n".join(ours) + "\n")
    (Path(site) / "only_in_the_other_venv.py").write_text("")
    return python


def run(python: Path | str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(python), *args], env=env, capture_output=True, text=True,
                          timeout=90, cwd=ROOT)


def test_each_venv_runs_its_calls_in_its_own_interpreter(tmp_path, home):
    other = other_venv(tmp_path)
    other_prefix = str(other.parent.parent)
    # This venv's cluster starts first: the other venv's call must not run in it.
    mine = run(sys.executable, home, "-c", WHERE)
    assert mine.returncode == 0, mine.stderr
    assert json.loads(mine.stdout) == {"prefix": sys.prefix, "executable": sys.executable,
                                       "found": False}
    theirs = run(other, home, "-c", WHERE)
    assert theirs.returncode == 0, theirs.stderr
    assert json.loads(theirs.stdout) == {"prefix": other_prefix, "executable": str(other),
                                         "found": True}
    # Both clusters run, each reported with the environment it runs.
    my_status = run(sys.executable, home, "-m", "burla", "local", "status")
    their_status = run(other, home, "-m", "burla", "local", "status")
    assert my_status.returncode == 0 and their_status.returncode == 0
    assert "embedded cluster: running at tcp://127.0.0.1:" in my_status.stdout
    assert f"for environment {sys.prefix} (Python " in my_status.stdout
    assert "also running: an embedded cluster at " in my_status.stdout
    assert f"for environment {other_prefix} (Python " in their_status.stdout
    assert f"calls run in environment {other_prefix} " in \
        run(other, home, "-m", "burla", "status").stdout
    # `burla local down` stops only the cluster of the interpreter it runs in.
    assert "stopped" in run(other, home, "-m", "burla", "local", "down").stdout
    assert run(other, home, "-m", "burla", "local", "status").returncode == 1
    assert run(sys.executable, home, "-m", "burla", "local", "status").returncode == 0
