"""The versions of burla's dependencies that its test suite has passed with, and a check of what
is installed against them.

pyproject.toml asks only for the floors (with a cap only where a newer version is known to
break burla), so `pip install burla` gets current dependencies. CI runs the suite at both ends:
the floors (constraints/floor.txt) and the newest versions of the day (constraints/ci.txt, the
ceilings here). A version past a ceiling is not known to break burla, only untested;
`untested()` names it, and tests/unit/test_dependencies.py fails on it so that drift is seen
by a developer before a user meets it.
"""

from __future__ import annotations

import re
from importlib import metadata

# distribution name -> (oldest, newest) version the suite passed with.
TESTED: dict[str, tuple[str, str]] = {
    "cloudpickle": ("3.0.0", "3.1.3"),
    "google-auth": ("2.20.0", "2.63.0"),
    "google-cloud-compute": ("1.15.0", "1.57.0"),
    "msgpack": ("1.0.5", "1.2.4"),
    "nvidia-ml-py": ("12.535.77", "13.615.71"),
    "platformdirs": ("4.0.0", "4.14.9"),
    "psutil": ("5.9.5", "7.2.2"),
    "pyzmq": ("26.0.0", "27.3.0"),
    # rich below 13.1 lacks Traceback(locals_hide_dunder=), which structlog's console
    # renderer passes: logging an exception raised TypeError.
    "rich": ("13.1.0", "15.0.0"),
    "structlog": ("24.1.0", "26.1.0"),
    # tblib below 3.2 rebuilds an exception by calling its __init__: MyError(msg, code) would
    # arrive as RemoteError.
    "tblib": ("3.2.0", "3.2.2"),
    # typer below 0.16 breaks on click 8.2+ (Parameter.make_metavar() takes ctx).
    "typer": ("0.16.0", "0.29.2"),
    "uvloop": ("0.19.0", "0.23.0"),
}


def release(version: str) -> tuple[int, ...]:
    """The numeric release part of a version: "27.3.0rc1" -> (27, 3, 0)."""
    found = re.match(r"\d+(?:\.\d+)*", version)
    return tuple(int(part) for part in found.group().split(".")) if found else ()


def untested() -> list[str]:
    """One line per dependency that is missing or installed outside its tested range."""
    problems = []
    for name, (oldest, newest) in TESTED.items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            problems.append(f"{name} is not installed (burla needs {name}>={oldest})")
            continue
        if not release(oldest) <= release(installed) <= release(newest):
            problems.append(f"{name} {installed} is outside the tested range "
                            f"{oldest} .. {newest}")
    return problems
