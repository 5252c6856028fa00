"""scripts/startup.sh, the worker VM's startup script: the unit it writes is the repository's,
its install step asks uv for the cluster's Python and burla (a stub uv here: no network), a
second boot keeps what the first installed, and what is missing or wrong is named."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import burla
from tests.fakes.metadata import FakeMetadata

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(shutil.which("curl") is None, reason="the startup script needs curl"),
]

REPO = Path(__file__).parents[2]
SCRIPT = REPO / "scripts" / "startup.sh"
UNIT = REPO / "systemd" / "burla-agent.service"
PYTHON = ".".join(platform.python_version_tuple()[:2])

# A stand-in uv: records each call; `uv venv` makes a venv whose python runs this interpreter,
# except that `python -m burla ...` (the agent) only records its arguments.
STUB_UV = """#!/bin/sh
echo "uv $* UV_PYTHON_INSTALL_DIR=$UV_PYTHON_INSTALL_DIR" >> "$CALLS"
if [ "$1" = venv ]; then
    eval "dir=\\${$#}"
    mkdir -p "$dir/bin"
    cat > "$dir/bin/python" <<EOF
#!/bin/sh
if [ "\\$1" = -m ] && [ "\\$2" = burla ]; then echo "agent \\$*" >> "$CALLS"; exit 0; fi
exec {python} "\\$@"
EOF
    chmod +x "$dir/bin/python"
fi
"""


@pytest.fixture
def server() -> Iterator[FakeMetadata]:
    with FakeMetadata() as fake:
        yield fake


def boot(tmp_path: Path, server: FakeMetadata, attributes: dict[str, str],
         **env: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Run the script once as a VM with `attributes` would; (its result, the calls made)."""
    server.add("127.0.0.1", "vm-1", "us-central1-a", "p", attributes)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "uv").write_text(STUB_UV.replace("{python}", sys.executable))
    (bin_dir / "uv").chmod(0o755)
    calls = tmp_path / "calls"
    done = subprocess.run(
        ["bash", str(SCRIPT)], capture_output=True, text=True, timeout=50,
        env={"PATH": f"{bin_dir}:{os.environ['PATH']}", "CALLS": str(calls),
             "BURLA_STARTUP_METADATA_URL": server.url,
             "BURLA_STARTUP_PREFIX": str(tmp_path / "opt"),
             "BURLA_STARTUP_STATE_DIR": str(tmp_path / "state"), **env})
    return done, calls.read_text().splitlines() if calls.exists() else []


def test_the_unit_it_writes_is_the_repositorys(tmp_path):
    written = tmp_path / "burla-agent.service"
    subprocess.run(["bash", "-c", f'source "{SCRIPT}"; UNIT_PATH="{written}"; '
                                  'write_unit /opt/burla/venv/bin/python'],
                   check=True, timeout=10, env={"PATH": os.environ["PATH"]})
    assert written.read_text() == UNIT.read_text()
    assert "burla agent --from-metadata" in UNIT.read_text()


def test_it_installs_the_clusters_python_and_burla_then_runs_the_agent(tmp_path, server):
    attributes = {"burla-version": burla.__version__, "burla-python": PYTHON}
    done, calls = boot(tmp_path, server, attributes)
    assert done.returncode == 0, done.stderr
    venv = tmp_path / "opt" / "venv"
    pythons = f"UV_PYTHON_INSTALL_DIR={tmp_path / 'opt' / 'python'}"
    assert calls == [
        f"uv python install {PYTHON} {pythons}",
        f"uv venv --python {PYTHON} {venv} {pythons}",
        f"uv pip install --python {venv}/bin/python burla=={burla.__version__} {pythons}",
        f"agent -m burla agent --from-metadata --metadata-url {server.url} "
        f"--state-dir {tmp_path / 'state'} --sandbox",
    ]
    assert "no systemd here: running the agent in the foreground" in done.stderr

    done, calls_again = boot(tmp_path, server, attributes)  # the next boot
    assert done.returncode == 0, done.stderr
    assert calls_again[len(calls):] == [calls[-1]], "a second boot installed again"
    assert f"burla {burla.__version__} on Python {PYTHON} is installed already" in done.stderr


@pytest.mark.parametrize(("attributes", "error"), [
    ({"burla-python": PYTHON}, "metadata attribute burla-version is missing on this instance: "
                               "the coordinator sets it"),
    ({"burla-version": "1.0.0"}, "metadata attribute burla-python is missing"),
    ({"burla-version": "1.0.0", "burla-python": "three"},
     "metadata attribute burla-python is 'three', not a Python minor version like 3.12"),
    ({"burla-version": "1.0; rm -rf /", "burla-python": PYTHON},
     "metadata attribute burla-version is '1.0; rm -rf /', not a version"),
])
def test_missing_or_bad_attributes_are_named(tmp_path, server, attributes, error):
    done, calls = boot(tmp_path, server, attributes)
    assert done.returncode == 1
    assert f"burla-startup: error: {error}" in done.stderr
    assert calls == [], "it went on after the error"


def test_skipping_the_install_runs_the_given_interpreter(tmp_path, server):
    done, calls = boot(tmp_path, server, {"burla-python": "3.4"}, BURLA_STARTUP_SKIP_INSTALL="1",
                       BURLA_STARTUP_PYTHON=sys.executable)
    assert done.returncode == 1 and calls == []
    assert f"BURLA_STARTUP_PYTHON={sys.executable} is Python {PYTHON}; the cluster wants 3.4" \
        in done.stderr
    done, _ = boot(tmp_path, server, {}, BURLA_STARTUP_SKIP_INSTALL="1")
    assert done.returncode == 1
    assert "BURLA_STARTUP_SKIP_INSTALL=1 needs BURLA_STARTUP_PYTHON" in done.stderr
