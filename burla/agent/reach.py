"""Which directories on the way to some paths a uid may not search; it reads modes, changes
nothing, and knows nothing of sandboxes."""

from __future__ import annotations

import os
import stat


def closed_ancestors(paths: tuple[str, ...], uid: int, gid: int) -> dict[str, list[str]]:
    """Directories on the way to `paths` that uid/gid may not search, each with its children
    on that way, shallowest first. Missing paths are skipped: there is nothing to expose."""
    plan: dict[str, set[str]] = {}
    for path in paths:
        real = os.path.realpath(path)
        if not os.path.exists(real):
            continue
        current = "/"
        for part in real.split("/")[1:]:
            child = os.path.join(current, part)
            if not _searchable(os.stat(current), uid, gid):
                plan.setdefault(current, set()).add(child)
            current = child
    ordered = sorted(plan, key=lambda d: d.count("/") - (d == "/"))
    return {d: sorted(plan[d]) for d in ordered}


def _searchable(st: os.stat_result, uid: int, gid: int) -> bool:
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid == gid:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)
