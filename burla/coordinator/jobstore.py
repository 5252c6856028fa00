"""SQLite (WAL) job store in the coordinator's state dir: what must outlive the coordinator.

Detached jobs live here: their function, input chunks until run, results until collected, and
their output lines. A restarted coordinator resumes them from here. Once one is over (collected
or cancelled), a short record of how and when stays, so that a later attach is told. Attached
jobs are not written: their client holds every unfinished chunk and uploads it again after a
restart (writing each 1 MB chunk costs ~6 ms here, more than the whole relay). Never unpickles
user data.

Every write is one transaction, all or nothing: one that fails (a full disk) is rolled back and
raises `StoreError`, naming the state dir and its free space. Writes that add data leave a
reserve free (`storefile.RESERVE_BYTES`), so that ending jobs still fits; an end that does not
fit even so is kept in memory, answered from there, and written once there is room. A corrupt
file is moved aside at open, and the new store remembers that reset, so that an attach to a job
it held is told what happened.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import structlog

from burla.coordinator import storefile

log = structlog.get_logger("burla.coordinator")

# Output lines kept per detached job; later lines are counted, not stored.
MAX_LOG_LINES_PER_JOB = 100_000
# Detached jobs that are over whose end is remembered (the latest); a few hundred bytes each.
MAX_ENDED_JOBS = 10_000

_SCHEMA = """
create table if not exists functions (hash text primary key, data blob not null);
create table if not exists jobs (
    job_id text primary key, owner text not null, function_hash text not null,
    function_name text not null, request text not null, max_parallelism integer,
    parent_job text, total integer, inputs_done integer not null default 0,
    canceled text, submitted_at real not null, log_lines integer not null default 0,
    dropped_lines integer not null default 0);
create table if not exists chunks (
    job_id text not null, chunk_id integer not null, first_index integer not null,
    count integer not null, data blob not null, primary key (job_id, chunk_id));
create table if not exists results (
    id integer primary key, job_id text not null, first_index integer not null,
    count integer not null, errors text not null, data blob not null);
create index if not exists results_by_job on results (job_id, first_index);
create table if not exists logs (id integer primary key, job_id text not null, entries blob);
create index if not exists logs_by_job on logs (job_id);
create table if not exists ended (
    seq integer primary key autoincrement, job_id text unique not null, owner text not null,
    outcome text not null, detail text not null, ended_at real not null);
create table if not exists resets (at real not null, kept text not null, reason text not null);
"""


@dataclass(frozen=True)
class StoredJob:
    job_id: str
    owner: str
    function_hash: str
    function_name: str
    request: dict[str, Any]
    max_parallelism: int | None
    parent_job: str | None
    total: int | None
    inputs_done: bool
    canceled: str | None
    submitted_at: float
    done: int
    chunks: list[tuple[int, int, int, int]]  # (chunk_id, first_index, count, reported)


@dataclass(frozen=True)
class EndedJob:
    """How a detached job ended: `outcome` "collected" or "canceled", `detail` (why it was
    cancelled), and `ended_at`, a Unix time."""

    job_id: str
    owner: str
    outcome: str
    detail: str
    ended_at: float


@dataclass(frozen=True)
class StoredResults:
    first_index: int
    count: int
    errors: list[int]
    data: bytes


class JobStore:
    def __init__(self, path: Path | str, reserve_bytes: int | None = None) -> None:
        """Open (or create) the store at `path`, moving a corrupt file aside (`reset` then says
        when, and where it is kept). `reserve_bytes`: the free space that writes adding data
        leave on the disk (by default `storefile.reserve_for` the state dir)."""
        self.path = Path(path)
        in_memory = str(path) == ":memory:"
        moved: storefile.StoreReset | None = None
        try:
            self.db = _open(self.path)
        except (sqlite3.DatabaseError, storefile.CorruptStore) as exc:
            if in_memory or not storefile.is_corrupt(exc):
                raise
            moved = storefile.move_aside(self.path, exc, time.time())
            self.db = _open(self.path)
        if in_memory:
            reserve_bytes = 0
        elif reserve_bytes is None:
            reserve_bytes = storefile.reserve_for(self.path.parent)
        self.reserve = reserve_bytes
        if reserve_bytes:  # the WAL is copied into the database (and reset) within the reserve
            pages = max(16, min(1000, reserve_bytes // 2 // 4096))
            self.db.execute(f"pragma wal_autocheckpoint={pages}")
            self.db.execute(f"pragma journal_size_limit={reserve_bytes // 2}")
        # Ends that could not be written (a full disk): answered from here, written later.
        self.unsaved: dict[str, EndedJob] = {}
        self._unsaved_logged = False
        if moved is not None:
            self.db.execute("insert into resets (at, kept, reason) values (?, ?, ?)",
                            (moved.at, moved.kept, moved.reason))
        row = self.db.execute("select at, kept, reason from resets order by at desc "
                              "limit 1").fetchone()
        self.reset = storefile.StoreReset(*row) if row else None

    def close(self) -> None:
        self.db.close()

    @contextlib.contextmanager
    def _write(self, adds: int = 0) -> Iterator[None]:
        """One transaction: every statement in it is stored, or none is (StoreError). `adds`:
        the bytes it adds, refused beforehand where they would eat into the reserve."""
        if adds and self.reserve:  # written to the WAL, then copied into the database
            free = storefile.free_bytes(self.path.parent)
            if free < 2 * adds + self.reserve:
                raise storefile.no_room(self.path, adds, free, self.reserve)
        try:
            self.db.execute("begin immediate")
            yield
            self.db.execute("commit")
        except BaseException as exc:
            if self.db.in_transaction:  # SQLite may have rolled back already (a full disk)
                with contextlib.suppress(sqlite3.Error):
                    self.db.execute("rollback")
            if isinstance(exc, sqlite3.Error):
                raise storefile.write_failed(self.path, exc) from exc
            raise

    # --- writes (each raises StoreError, and then changed nothing) -------------------------

    def add_job(self, job_id: str, owner: str, function_hash: str, function: bytes,
                function_name: str, request: dict[str, Any], max_parallelism: int | None,
                parent_job: str | None) -> None:
        with self._write(adds=len(function) + 4096):
            self.db.execute("insert or ignore into functions values (?, ?)",
                            (function_hash, bytes(function)))
            self.db.execute(
                "insert or ignore into jobs (job_id, owner, function_hash, function_name, "
                "request, max_parallelism, parent_job, submitted_at) values (?,?,?,?,?,?,?,?)",
                (job_id, owner, function_hash, function_name, json.dumps(request),
                 max_parallelism, parent_job, time.time()),
            )

    def add_chunk(self, job_id: str, chunk_id: int, first_index: int, count: int,
                  data: Any) -> None:
        buffer = memoryview(_buffer(data))
        with self._write(adds=buffer.nbytes):
            self.db.execute("insert or ignore into chunks values (?, ?, ?, ?, ?)",
                            (job_id, chunk_id, first_index, count, buffer))

    def delete_chunk(self, job_id: str, chunk_id: int) -> None:
        with self._write():
            self.db.execute("delete from chunks where job_id = ? and chunk_id = ?",
                            (job_id, chunk_id))

    def inputs_done(self, job_id: str, total: int) -> None:
        with self._write():
            self.db.execute("update jobs set total = ?, inputs_done = 1 where job_id = ?",
                            (total, job_id))

    def add_results(self, job_id: str, first_index: int, count: int, errors: list[int],
                    data: Any) -> None:
        buffer = memoryview(_buffer(data))
        with self._write(adds=buffer.nbytes):
            self.db.execute(
                "insert into results (job_id, first_index, count, errors, data) "
                "values (?, ?, ?, ?, ?)",
                (job_id, first_index, count, json.dumps(errors), buffer),
            )

    def add_logs(self, job_id: str, count: int, packed: Any) -> None:
        """Keep `count` entries, packed as msgpack by their executor (stored as they came)."""
        count = max(0, count)
        buffer = memoryview(_buffer(packed))
        row = self.db.execute("select log_lines from jobs where job_id = ?", (job_id,)).fetchone()
        if row is None:
            return
        if row[0] + count > MAX_LOG_LINES_PER_JOB:
            with self._write():
                self.db.execute("update jobs set dropped_lines = dropped_lines + ? "
                                "where job_id = ?", (count, job_id))
            return
        with self._write(adds=buffer.nbytes):
            self.db.execute("insert into logs (job_id, entries) values (?, ?)", (job_id, buffer))
            self.db.execute("update jobs set log_lines = log_lines + ? where job_id = ?",
                            (count, job_id))

    def end_job(self, job_id: str, owner: str, outcome: str, detail: str = "") -> bool:
        """Drop the job's data, and remember that it ended, how and when (the latest
        MAX_ENDED_JOBS ends are kept). Never raises: an end that cannot be written now (a full
        disk) is kept in memory, answered by `ended`, and written by a later `retry_unsaved`.
        True when it is written."""
        self.unsaved[job_id] = EndedJob(job_id, owner, outcome, detail, time.time())
        return self.retry_unsaved()

    def retry_unsaved(self) -> bool:
        """Write the ends kept in memory; True when none is left there."""
        if not self.unsaved:
            return True
        try:
            with self._write():
                for record in self.unsaved.values():
                    for table in ("jobs", "chunks", "results", "logs"):
                        self.db.execute(f"delete from {table} where job_id = ?",  # noqa: S608
                                        (record.job_id,))
                    self.db.execute(
                        "insert or replace into ended (job_id, owner, outcome, detail, "
                        "ended_at) values (?, ?, ?, ?, ?)",
                        (record.job_id, record.owner, record.outcome, record.detail,
                         record.ended_at))
                self.db.execute("delete from ended where seq <= (select max(seq) from ended) "
                                "- ?", (MAX_ENDED_JOBS,))
        except storefile.StoreError as exc:
            if not self._unsaved_logged:
                self._unsaved_logged = True
                log.error("job_store_end_unsaved", jobs=len(self.unsaved), error=str(exc),
                          message="ended jobs are kept in memory until the store has room")
            return False
        if self._unsaved_logged:
            log.info("job_store_end_saved", jobs=len(self.unsaved))
        self.unsaved.clear()
        self._unsaved_logged = False
        return True

    # --- reads ----------------------------------------------------------------------------

    def function(self, function_hash: str) -> bytes | None:
        row = self.db.execute("select data from functions where hash = ?",
                              (function_hash,)).fetchone()
        return bytes(row[0]) if row else None

    def chunk_data(self, job_id: str, chunk_id: int) -> bytes:
        row = self.db.execute("select data from chunks where job_id = ? and chunk_id = ?",
                              (job_id, chunk_id)).fetchone()
        if row is None:
            raise KeyError(f"chunk {chunk_id} of job {job_id} is not in the store")
        return bytes(row[0])

    def ended(self, job_id: str) -> EndedJob | None:
        if job_id in self.unsaved:
            return self.unsaved[job_id]
        row = self.db.execute("select job_id, owner, outcome, detail, ended_at from ended "
                              "where job_id = ?", (job_id,)).fetchone()
        return EndedJob(*row) if row else None

    def results(self, job_id: str) -> Iterator[StoredResults]:
        """The job's stored result batches, read one at a time (writes may go on meanwhile)."""
        ids = [row[0] for row in self.db.execute(
            "select id from results where job_id = ? order by first_index", (job_id,))]
        for row_id in ids:
            row = self.db.execute("select first_index, count, errors, data from results "
                                  "where id = ?", (row_id,)).fetchone()
            if row is not None:
                first, count, errors, data = row
                yield StoredResults(first, count, json.loads(errors), bytes(data))

    def logs(self, job_id: str) -> Iterator[list[Any]]:
        rows = self.db.execute("select entries from logs where job_id = ? order by id", (job_id,))
        for (entries,) in rows:
            try:
                yield from msgpack.unpackb(entries)
            except Exception:  # a sender's garbage: skip it, keep the rest
                continue

    def jobs(self) -> list[StoredJob]:
        """Every stored job with its unfinished chunks and how far each got."""
        stored = []
        for row in self.db.execute(
            "select job_id, owner, function_hash, function_name, request, max_parallelism, "
            "parent_job, total, inputs_done, canceled, submitted_at from jobs"
        ).fetchall():
            job_id = row[0]
            done = self.db.execute("select coalesce(sum(count), 0) from results where job_id = ?",
                                   (job_id,)).fetchone()[0]
            chunks = []
            for chunk_id, first, count in self.db.execute(
                "select chunk_id, first_index, count from chunks where job_id = ? "
                "order by first_index", (job_id,)
            ).fetchall():
                # Results of a chunk are a growing prefix of it (a resend may overlap).
                reported = self.db.execute(
                    "select coalesce(max(first_index + count), ?) - ? from results where "
                    "job_id = ? and first_index >= ? and first_index < ?",
                    (first, first, job_id, first, first + count),
                ).fetchone()[0]
                if reported < count:  # else only its deletion failed (a full disk)
                    chunks.append((chunk_id, first, count, reported))
            stored.append(StoredJob(
                job_id, row[1], row[2], row[3], json.loads(row[4]), row[5], row[6], row[7],
                bool(row[8]), row[9], row[10], done, chunks,
            ))
        return stored


def _open(path: Path) -> sqlite3.Connection:
    db = storefile.connect(path)
    try:
        db.executescript(_SCHEMA)  # writes nothing where the tables exist
    except BaseException:
        db.close()
        raise
    return db


def _buffer(data: Any) -> Any:
    return data.buffer if hasattr(data, "buffer") else data
