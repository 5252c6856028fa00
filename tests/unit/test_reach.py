"""closed_ancestors walks the way the kernel does: through symlinks (the link is on the way,
and so is its target's way), `..` after a link, loops and dangling links skipped."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from burla.agent.reach import closed_ancestors
from burla.agent.sandbox import NOBODY


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """layout/home, mode 0700, in an open layout/."""
    (tmp_path / "layout").mkdir(mode=0o755)
    closed = tmp_path / "layout" / "home"
    closed.mkdir(mode=0o700)
    return closed


def plan_of(*paths: Path, emptied: tuple[str, ...] = ()) -> dict[str, list[str]]:
    """The plan within the test's own dir: pytest's base dir above it may be closed too."""
    plan = closed_ancestors(tuple(map(str, paths)), NOBODY, NOBODY, emptied)
    base = str(paths[0]).split("/layout/", 1)[0] + "/layout"
    return {d: children for d, children in plan.items() if d.startswith(base)}


def test_every_child_on_the_way_is_listed_at_any_depth(root: Path) -> None:
    (root / "repo").mkdir()
    (root / "secret").mkdir()
    (root / "envs" / "deep").mkdir(parents=True, mode=0o700)
    (root / "envs" / "deep" / "venv").mkdir()
    assert plan_of(root / "envs/deep/venv/lib") == {}, "a missing path exposes nothing"
    (root / "envs/deep/venv/lib").mkdir()
    os.chmod(root / "envs", 0o700)
    plan = plan_of(root / "repo", root / "envs/deep/venv/lib")
    assert plan == {
        str(root): [str(root / "envs"), str(root / "repo")],
        str(root / "envs"): [str(root / "envs/deep")],
        str(root / "envs/deep"): [str(root / "envs/deep/venv")],
    }
    assert list(plan) == sorted(plan, key=len), "shallowest first"


def test_a_symlink_is_on_the_way_and_so_is_its_targets_way(root: Path) -> None:
    store = root.parent / "store"
    (store / "venv" / "lib").mkdir(parents=True)
    os.chmod(store, 0o700)
    (root / ".venv").symlink_to("../store/venv")  # relative, out of the closed dir
    (root / "link-to-link").symlink_to(root / ".venv")
    plan = plan_of(root / "link-to-link/lib")
    assert plan == {
        str(root): [str(root / ".venv"), str(root / "link-to-link")],
        str(store): [str(store / "venv")],
    }


def test_dotdot_after_a_link_goes_up_from_the_target(root: Path) -> None:
    (root / "a" / "b").mkdir(parents=True)
    (root / "c").mkdir()
    (root / "b-link").symlink_to(root / "a" / "b")
    plan = plan_of(root / "b-link/../../c")  # the kernel's way: a/b, then a, then root/c
    assert plan == {str(root): [str(root / "a"), str(root / "b-link"), str(root / "c")]}


def test_loops_and_dangling_links_expose_nothing(root: Path) -> None:
    (root / "loop").symlink_to("loop")
    (root / "dangling").symlink_to("missing")
    (root / "file").write_text("")
    assert plan_of(root / "loop/x", root / "dangling", root / "file/x") == {}


def test_an_emptied_dir_lists_its_children_on_the_way_though_it_is_open(root: Path) -> None:
    tmp = root.parent / "tmp"
    (tmp / "venv").mkdir(parents=True)
    (tmp / "other").mkdir()
    os.chmod(tmp, 0o1777)
    assert plan_of(tmp / "venv") == {}
    assert plan_of(tmp / "venv", emptied=(str(tmp),)) == {str(tmp): [str(tmp / "venv")]}
