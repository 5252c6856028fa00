"""The way to the runtime through closed and private tmp dirs, against the real kernel: a real
venv and an editable source under 0700 dirs (two children, nested, behind symlinks, the test's
own venv behind a link), in /tmp as `mktemp -d` makes them and outside it. Inside the sandbox
the venv's python must run and import both, and only the entries on the way may show. Root only.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from burla.agent.sandbox import SandboxSpec
from tests.integration.sandbox_harness import (
    EVENT_TIMEOUT,
    MARKS,
    no_leftover_processes,  # noqa: F401 - an autouse fixture: importing it applies it here
    result_of,
    run_sandboxed,
)

pytestmark = MARKS
# /tmp: under a private tmp dir, as `mktemp -d` and tempfile make them; /var/lib: not.
BASES = ("/tmp", "/var/lib")
# What limits.runtime_paths() would give an agent started by this interpreter.
RUNTIME_PATHS = """import json, os, sys
mod = __import__(sys.argv[1].split(".")[0])
paths = [sys.prefix, sys.exec_prefix, sys.base_prefix,
         os.path.dirname(os.path.dirname(os.path.abspath(mod.__file__)))]
paths += [p for p in sys.path if os.path.isabs(p)]
print(json.dumps([p for p in dict.fromkeys(paths) if os.path.exists(p)]))
"""
# What the user's code does first: import from the venv and from the editable source.
IMPORTS = """import json, sys, importlib
values = [getattr(importlib.import_module(m), "VALUE", m) for m in sys.argv[1:]]
print(json.dumps({"prefix": sys.prefix, "values": values}))
"""


@dataclass
class Layout:
    """A runtime under closed dirs, as a user would have it, and what the sandbox must show."""

    root: Path  # mode 0700, like a home directory
    python: str = ""  # the venv's interpreter, by the path a user runs it
    modules: tuple[str, ...] = ("venv_mod", "repo_pkg")
    listings: dict[str, list[str]] = field(default_factory=dict)  # each closed dir: the way
    secrets: list[str] = field(default_factory=list)  # siblings off the way: must not show
    hidden: str = ""  # a hidden path inside a bridged dir: must stay hidden

    def add(self, *relative: str) -> Path:
        for name in relative:
            (self.root / name).mkdir(parents=True)
        return self.root / relative[-1]

    def secret(self, relative: str) -> None:
        path = self.root / relative
        path.write_text("secret")
        self.secrets.append(str(path))

    def closed(self, relative: str, *way: str) -> None:
        directory = self.root / relative if relative else self.root
        directory.chmod(0o700)
        self.listings[str(directory)] = sorted(way)

    def exposed(self) -> tuple[str, ...]:
        out = _run([self.python, "-c", RUNTIME_PATHS, self.modules[-1]])
        return tuple(json.loads(out))


def _run(argv: list[str]) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=EVENT_TIMEOUT)
    assert done.returncode == 0, f"{argv} failed: {done.stderr}"
    return done.stdout


def _venv_with_source(layout: Layout, venv: Path, repo: Path) -> None:
    """A real venv at `venv` and an editable source in `repo`, linked by a .pth file as
    `pip install -e` links them, by the path given (symlinks kept)."""
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    [site] = venv.glob("lib/python*/site-packages")
    (site / "venv_mod.py").write_text("VALUE = 'from the venv'\n")
    (repo / "src" / "repo_pkg").mkdir(parents=True)
    (repo / "src" / "repo_pkg" / "__init__.py").write_text("VALUE = 'from the source'\n")
    (site / "repo_pkg.pth").write_text(f"{repo / 'src'}\n")
    layout.python = str(venv / "bin" / "python")


def two_children(layout: Layout) -> None:
    """~/code/burla with ~/code/burla/.venv's shape: one closed dir, two children on the way."""
    layout.add("repo", "venv")
    _venv_with_source(layout, layout.root / "venv", layout.root / "repo")
    layout.secret("secret")
    layout.closed("", "repo", "venv")
    layout.hidden = str(layout.add("repo/state"))


def nested(layout: Layout) -> None:
    """Closed dirs inside closed dirs, the venv two levels below the source."""
    layout.add("code/proj/repo", "code/envs/deep/venv")
    _venv_with_source(layout, layout.root / "code/envs/deep/venv", layout.root / "code/proj/repo")
    for secret in ("secret", "code/secret", "code/proj/secret", "code/envs/secret"):
        layout.secret(secret)
    layout.closed("", "code")
    layout.closed("code", "proj", "envs")
    layout.closed("code/proj", "repo")
    layout.closed("code/envs", "deep")


def symlinked_venv(layout: Layout) -> None:
    """proj/.venv is a relative link into another closed dir; proj/repo links to its source."""
    layout.add("store/venv", "store/checkout", "proj")
    _venv_with_source(layout, layout.root / "store/venv", layout.root / "proj/repo")
    (layout.root / "proj/.venv").symlink_to("../store/venv")
    (layout.root / "proj/repo").rename(layout.root / "store/checkout/repo")
    (layout.root / "proj/repo").symlink_to(layout.root / "store/checkout/repo")
    layout.python = str(layout.root / "proj/.venv/bin/python")
    for secret in ("secret", "proj/secret", "store/secret"):
        layout.secret(secret)
    layout.closed("", "proj", "store")
    layout.closed("proj", ".venv", "repo")
    layout.closed("store", "venv", "checkout")


def real_venv_linked(layout: Layout) -> None:
    """This test run's own venv and burla, reached by a link in a closed dir."""
    if sys.prefix == sys.base_prefix:
        pytest.skip("the tests do not run in a venv")
    (layout.root / "venv").symlink_to(sys.prefix)
    layout.python = str(layout.root / "venv" / "bin" / "python")
    layout.modules = ("burla.agent.reach",)
    layout.secret("secret")
    layout.closed("", "venv")


LAYOUTS: dict[str, Callable[[Layout], None]] = {
    f.__name__: f for f in (two_children, nested, symlinked_venv, real_venv_linked)
}


@pytest.fixture(params=[(b, name) for b in BASES for name in LAYOUTS], ids="-".join)
def layout(request: pytest.FixtureRequest) -> Iterator[Layout]:
    base, name = request.param
    built = Layout(Path(tempfile.mkdtemp(prefix="burla-reach-", dir=base)))  # mode 0700
    try:
        LAYOUTS[name](built)
        yield built
    finally:
        shutil.rmtree(built.root)


def _attempt(action: Callable[[], Any]) -> Any:
    try:
        return {"value": action()}
    except OSError as e:
        return {"error": type(e).__name__}


def test_runtime_under_closed_dirs_runs_and_shows_only_the_way(layout: Layout) -> None:
    exposed = layout.exposed()
    spec = SandboxSpec(exposed_paths=exposed, hidden_paths=tuple(filter(None, [layout.hidden])))

    def inside() -> dict[str, Any]:
        return {
            "run": _attempt(lambda: subprocess.run(
                [layout.python, "-c", IMPORTS, *layout.modules],
                capture_output=True, text=True, timeout=EVENT_TIMEOUT,
            ).__dict__),
            "listings": {d: _attempt(lambda d=d: sorted(os.listdir(d))) for d in layout.listings},
            "tmp": sorted(os.listdir("/tmp")),
            "secrets": {s: _attempt(Path(s).read_text) for s in layout.secrets},
            "hidden": _attempt(lambda: os.listdir(layout.hidden)) if layout.hidden else None,
            "uid": os.getuid(),
        }

    result = result_of(run_sandboxed(spec, inside))
    assert result["uid"] != 0
    assert "value" in result["run"], f"{layout.python} could not start: {result['run']}"
    run = result["run"]["value"]
    assert run["returncode"] == 0, run["stderr"]
    ran = json.loads(run["stdout"])
    expected = ["from the venv", "from the source"] if len(layout.modules) == 2 else layout.modules
    assert ran == {"prefix": os.path.dirname(os.path.dirname(layout.python)),
                   "values": list(expected)}
    assert result["listings"] == {d: {"value": way} for d, way in layout.listings.items()}
    assert result["secrets"] == {s: {"error": "FileNotFoundError"} for s in layout.secrets}
    if layout.hidden:
        assert result["hidden"] == {"error": "PermissionError"}, "hidden inside the way too"
    under_tmp = {q.split("/")[2] for p in exposed for q in (p, os.path.realpath(p))
                 if q.startswith("/tmp/")}
    assert result["tmp"] == sorted(under_tmp), "the private /tmp holds only the way"


@pytest.mark.parametrize("base", BASES)
def test_a_workdir_in_a_bridged_dir_is_refused_and_the_host_untouched(base: str) -> None:
    root = Path(tempfile.mkdtemp(prefix="burla-reach-", dir=base))  # mode 0700
    try:
        (root / "repo").mkdir()
        for workdir in (root / "repo", root / "repo" / "burla"):  # a clone at /tmp/burla...
            spec = SandboxSpec(exposed_paths=(str(root / "repo"),), workdir=str(workdir))
            outcome = run_sandboxed(spec, dict)
            assert outcome.reply["step"] == f"create workdir {workdir}"
            assert f"lies in {root / 'repo'}" in outcome.reply["error"]
            assert outcome.reply["pid"] > 2, "refused before any namespace"
        assert os.listdir(root / "repo") == [], "nothing created in the host's own dir"
        spec = SandboxSpec(exposed_paths=(str(root / "repo"),), workdir=str(root / "fresh"))
        assert result_of(run_sandboxed(spec, os.getcwd)) == str(root / "fresh")
        assert os.listdir(root) == ["repo"], "made on the cover's tmpfs, not on the host"
    finally:
        shutil.rmtree(root)
