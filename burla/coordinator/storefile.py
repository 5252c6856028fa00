"""The job store's SQLite file: opened and checked, moved aside if corrupt, failures named.

A store found corrupt when the coordinator starts (its header or pages overwritten while it was
down) is renamed to `jobs.sqlite3.corrupt-<UTC time>`, with its -wal and -shm, and kept; the
coordinator starts with an empty store and says so loudly, instead of failing every start. A
write that fails (a full disk, an I/O error) becomes a `StoreError` that names the state dir and
its free space, in words a user can act on.
"""

from __future__ import annotations

import shutil
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import structlog

log = structlog.get_logger("burla.coordinator")

# SQLite's primary result codes for a file that is not (or no longer) a sound database.
_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26
# Free space a detached job's writes leave on the state dir's disk: room for the store to end
# jobs, and to copy its WAL into the database (checkpoints come at half of it), once data no
# longer fits (a twentieth of a small disk, such as a test's tmpfs).
RESERVE_BYTES = 8 * 1024 * 1024


class StoreError(Exception):
    """A job store write failed and was rolled back; `str()` says why, naming the state dir and
    its free space."""

    def __init__(self, message: str, state_dir: Path, free_bytes: int) -> None:
        super().__init__(message)
        self.state_dir = state_dir
        self.free_bytes = free_bytes


class CorruptStore(Exception):
    """`pragma quick_check` found the store's pages unsound."""


@dataclass(frozen=True)
class StoreReset:
    """A corrupt store was moved aside: when (Unix time), where it is kept, and what was wrong."""

    at: float
    kept: str
    reason: str


def connect(path: Path | str) -> sqlite3.Connection:
    """Open the store at `path` in WAL mode and check it; raises sqlite3.DatabaseError or
    CorruptStore for a file that is not a sound database."""
    db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    try:
        db.execute("pragma journal_mode=wal")
        db.execute("pragma synchronous=normal")  # durable across a crash of the process
        # Some builds (Debian's) zero every freed page, so that a delete writes as much as the
        # data it drops: ending a job would not fit on a full disk. `fast` zeroes only within
        # pages written anyway.
        db.execute("pragma secure_delete=fast")
        problems = [str(row[0]) for row in db.execute("pragma quick_check(5)")]
        if problems != ["ok"]:
            raise CorruptStore("; ".join(problems))
    except BaseException:
        db.close()
        raise
    return db


def is_corrupt(exc: BaseException) -> bool:
    """True for an error that means the file is not a sound database (not a lock or full disk)."""
    if isinstance(exc, CorruptStore):
        return True
    if not isinstance(exc, sqlite3.DatabaseError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB)
    text = str(exc)
    return "malformed" in text or "not a database" in text


def move_aside(path: Path, why: BaseException, wall: float) -> StoreReset:
    """Rename the corrupt store at `path` (and its -wal and -shm) to a name of its own, kept."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(wall))
    kept = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while kept.exists():
        n += 1
        kept = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    for suffix in ("", "-wal", "-shm"):
        source = Path(f"{path}{suffix}")
        if source.exists():
            source.rename(f"{kept}{suffix}")
    reason = " ".join(str(why).split()) or type(why).__name__  # quick_check's lines, as one
    log.error("job_store_corrupt", path=str(path), kept=str(kept), error=reason,
              message=f"the job store {path} is corrupt ({reason}); it was moved to {kept} and "
                      f"kept, and the coordinator starts with an empty store: the detached jobs "
                      f"that were in it are lost")
    return StoreReset(wall, str(kept), reason)


def free_bytes(directory: Path) -> int:
    try:
        return shutil.disk_usage(directory).free
    except OSError:
        return 0


def reserve_for(directory: Path) -> int:
    """The free space detached jobs must leave on `directory`'s disk (see RESERVE_BYTES)."""
    try:
        return min(RESERVE_BYTES, shutil.disk_usage(directory).total // 20)
    except OSError:
        return 0


def write_failed(path: Path, exc: BaseException) -> StoreError:
    """The StoreError for a write to the store at `path` that SQLite refused with `exc`."""
    directory = path.parent
    free = free_bytes(directory)
    return StoreError(f"the coordinator could not write its job store {path} ({exc}); its "
                      f"state dir {directory} has {size(free)} free", directory, free)


def no_room(path: Path, need: int, free: int, reserve: int) -> StoreError:
    """The StoreError for a write of `need` bytes that would leave less than `reserve` free."""
    directory = path.parent
    return StoreError(f"the coordinator's state dir {directory} is full: it has {size(free)} "
                      f"free, and storing {size(need)} more (written twice, to the WAL and then "
                      f"the database) would leave less than the {size(reserve)} its job store "
                      f"keeps free", directory, free)


def size(nbytes: int) -> str:
    """`nbytes` in words: "512 B", "1.5 MiB"."""
    if nbytes < 1024:
        return f"{nbytes} B"
    value = nbytes / 1024
    for unit in ("KiB", "MiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"
