"""Dependency drift is seen here first: what is installed must be what the suite was run with."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from burla import dependencies

ROOT = Path(__file__).resolve().parents[2]


def test_installed_dependencies_are_within_the_tested_ranges() -> None:
    problems = dependencies.untested()
    assert not problems, (
        "dependencies outside the versions burla was tested with:\n  " + "\n  ".join(problems)
        + "\nInstall the tested versions (pip install -c constraints/ci.txt -e '.[test]'), or "
        "run the suite at the new version and widen burla/dependencies.py TESTED."
    )


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        found = re.fullmatch(r"([A-Za-z0-9_.-]+)==(\S+)", line.strip())
        if found:
            pins[found.group(1).lower()] = found.group(2)
    return pins


def test_the_declared_floors_the_tested_ranges_and_the_constraint_files_agree() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    floors = {}
    for requirement in project["dependencies"]:
        found = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([^,;\s]+)", requirement)
        assert found, f"{requirement!r}: declare a floor as name>=version"
        floors[found.group(1).lower()] = found.group(2)
    newest = _pins(ROOT / "constraints" / "ci.txt")
    oldest = _pins(ROOT / "constraints" / "floor.txt")
    assert set(floors) == set(dependencies.TESTED)
    for name, (low, high) in dependencies.TESTED.items():
        assert floors[name] == low, name
        assert oldest[name] == low, name
        assert newest[name] == high, name


def test_a_version_outside_its_range_is_named(monkeypatch) -> None:
    monkeypatch.setitem(dependencies.TESTED, "cloudpickle", ("0.1", "0.2"))
    problems = dependencies.untested()
    assert any(p.startswith("cloudpickle ") and "outside the tested range 0.1 .. 0.2" in p
               for p in problems), problems


def test_release_compares_numerically() -> None:
    assert dependencies.release("27.10.0") > dependencies.release("27.9.1")
    assert dependencies.release("3.1.3rc1") == (3, 1, 3)
