"""The way to some paths through directories a uid may not search, or that a fresh tmpfs
replaces: which entries lie on it (read before the unshare, changing nothing), and how a mount
namespace shows just those entries."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

from burla.agent.syscalls import MS_BIND, MS_NODEV, MS_NOSUID, MS_REC, mount, step

# The kernel's limit on symlinks followed in one path lookup (beyond it: ELOOP).
MAX_SYMLINKS = 40
Step = tuple[str, str]  # a directory on the way and its child on the way


def closed_ancestors(
    paths: tuple[str, ...], uid: int, gid: int, emptied: tuple[str, ...] = ()
) -> dict[str, list[str]]:
    """Directories on the way to `paths` that uid/gid may not search, or that are in
    `emptied` (real paths of directories whose contents the caller replaces), each with its
    children on that way, shallowest first.

    The way is the one the kernel walks: a symlink on it is a child of its directory (the link
    itself, not its target), and the walk goes on through its target, so the directories on
    the way there count too. Every directory named is a real path. A path that does not
    resolve (missing, or a symlink loop) is skipped: there is nothing to expose.
    """
    plan: dict[str, set[str]] = {}
    for path in paths:
        way = _way(os.path.join(os.getcwd(), path), uid, gid, frozenset(emptied))
        for directory, child in way or ():
            plan.setdefault(directory, set()).add(child)
    return {d: sorted(plan[d]) for d in sorted(plan, key=depth)}


@dataclass(frozen=True)
class Way:
    """The dirs whose contents a fresh tmpfs replaces: those closed to the uid (a 0755 tmpfs)
    and `emptied` (a private 1777 one), each showing only its children in `plan`."""

    plan: dict[str, list[str]]
    emptied: tuple[str, ...]

    @classmethod
    def to(cls, paths: tuple[str, ...], uid: int, gid: int, emptied: tuple[str, ...]) -> Way:
        return cls(closed_ancestors(paths, uid, gid, emptied), emptied)

    def bridge_under(self, path: str) -> str | None:
        """The bridged entry `path` is or lies in, where no cover is deeper: there it is the
        host's own. None where path is off the way, or on a cover's fresh tmpfs."""
        covered = {*self.plan, *self.emptied}
        entries = covered | {child for way in self.plan.values() for child in way}
        for where in dict.fromkeys((os.path.normpath(path), os.path.realpath(path))):
            above = [e for e in entries if os.path.commonpath([where, e]) == e]
            deepest = max(above, key=len, default=None)  # they nest, so the longest is deepest
            if deepest is not None and deepest not in covered:
                return deepest
        return None

    def open(self) -> dict[str, int | str]:
        """Each child on the way: an O_PATH fd, or a symlink's target (copied, not bound).

        Call it after the unshare (a bind mount's source must be a mount of our own
        namespace) and before cover(), which hides what it opens.
        """
        children = [child for way in self.plan.values() for child in way]
        bridges: dict[str, int | str] = {}
        with step(f"open {', '.join(children)}"):
            for child in children:
                if os.path.islink(child):
                    bridges[child] = os.readlink(child)
                else:
                    bridges[child] = os.open(child, os.O_PATH | os.O_NOFOLLOW)
        return bridges

    def cover(self, bridges: dict[str, int | str]) -> None:
        """Mount the tmpfs on each dir, shallowest first, holding just its children on the way:
        bind mounts of them, copies of the symlinks. Closes the fds in `bridges`."""
        for directory in sorted({*self.plan, *self.emptied}, key=depth):
            children = self.plan.get(directory, [])
            if not children and not os.path.isdir(directory):
                continue  # a private tmp dir under a closed dir covered above: out of reach
            private = directory in self.emptied
            name = f"mount a private tmpfs on {directory}" if private else f"cover {directory}"
            with step(name + (f" but {', '.join(children)}" if children else "")):
                mount("tmpfs", directory, "tmpfs", MS_NOSUID | MS_NODEV,
                      "mode=1777" if private else "mode=755,size=64k")
                for child in children:
                    _bridge(child, bridges[child])
        for bridge in bridges.values():
            if isinstance(bridge, int):
                os.close(bridge)


def _bridge(child: str, bridge: int | str) -> None:
    if isinstance(bridge, str):
        os.symlink(bridge, child)
        return
    if stat.S_ISDIR(os.fstat(bridge).st_mode):
        os.mkdir(child, 0o755)
    else:
        os.close(os.open(child, os.O_CREAT | os.O_WRONLY, 0o644))
    mount(f"/proc/self/fd/{bridge}", child, None, MS_BIND | MS_REC)


def depth(directory: str) -> int:
    """How many directories lie above `directory`, a normalised absolute path; "/" is 0."""
    return directory.count("/") - (directory == "/")


def _way(path: str, uid: int, gid: int, emptied: frozenset[str]) -> set[Step] | None:
    """The steps on the way to `path` out of a closed or emptied directory, or None if it does
    not resolve."""
    steps: set[Step] = set()
    todo = [part for part in reversed(path.split("/")) if part]  # a stack: next part last
    current, links = "/", 0
    while todo:
        part = todo.pop()
        if part == ".":
            continue
        if part == "..":
            current = os.path.dirname(current)
            continue
        child = os.path.join(current, part)
        try:
            st = os.lstat(child)
        except OSError:  # missing, or a component on the way is not a directory
            return None
        if current in emptied or not _searchable(os.stat(current), uid, gid):
            steps.add((current, child))
        if not stat.S_ISLNK(st.st_mode):
            current = child
            continue
        links += 1
        if links > MAX_SYMLINKS:
            return None
        target = os.readlink(child)
        if target.startswith("/"):
            current = "/"
        todo.extend(part for part in reversed(target.split("/")) if part)
    return steps


def _searchable(st: os.stat_result, uid: int, gid: int) -> bool:
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid == gid:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)
