"""SQLite (WAL) job store in the coordinator's state dir: what must outlive the coordinator.

Detached jobs live here: their function, input chunks until run, results until collected, and
their output lines. A restarted coordinator resumes them from here. Once one is over (collected
or cancelled), a short record of how and when stays, so that a later attach is told. Attached
jobs are not written: their client holds every unfinished chunk and uploads it again after a
restart (writing each 1 MB chunk costs ~6 ms here, more than the whole relay). Never unpickles
user data.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

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
    def __init__(self, path: Path | str) -> None:
        self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.db.execute("pragma journal_mode=wal")
        self.db.execute("pragma synchronous=normal")  # durable across a crash of the process
        self.db.executescript(_SCHEMA)

    def close(self) -> None:
        self.db.close()

    # --- writes ---------------------------------------------------------------------------

    def add_job(self, job_id: str, owner: str, function_hash: str, function: bytes,
                function_name: str, request: dict[str, Any], max_parallelism: int | None,
                parent_job: str | None) -> None:
        with self.db:
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
        self.db.execute("insert or ignore into chunks values (?, ?, ?, ?, ?)",
                        (job_id, chunk_id, first_index, count, memoryview(_buffer(data))))

    def delete_chunk(self, job_id: str, chunk_id: int) -> None:
        self.db.execute("delete from chunks where job_id = ? and chunk_id = ?",
                        (job_id, chunk_id))

    def inputs_done(self, job_id: str, total: int) -> None:
        self.db.execute("update jobs set total = ?, inputs_done = 1 where job_id = ?",
                        (total, job_id))

    def add_results(self, job_id: str, first_index: int, count: int, errors: list[int],
                    data: Any) -> None:
        self.db.execute(
            "insert into results (job_id, first_index, count, errors, data) "
            "values (?, ?, ?, ?, ?)",
            (job_id, first_index, count, json.dumps(errors), memoryview(_buffer(data))),
        )

    def add_logs(self, job_id: str, count: int, packed: Any) -> None:
        """Keep `count` entries, packed as msgpack by their executor (stored as they came)."""
        count = max(0, count)
        row = self.db.execute("select log_lines from jobs where job_id = ?", (job_id,)).fetchone()
        if row is None:
            return
        if row[0] + count > MAX_LOG_LINES_PER_JOB:
            self.db.execute("update jobs set dropped_lines = dropped_lines + ? where job_id = ?",
                            (count, job_id))
            return
        with self.db:
            self.db.execute("insert into logs (job_id, entries) values (?, ?)",
                            (job_id, memoryview(_buffer(packed))))
            self.db.execute("update jobs set log_lines = log_lines + ? where job_id = ?",
                            (count, job_id))

    def cancel(self, job_id: str, why: str) -> None:
        with self.db:
            self.db.execute("update jobs set canceled = ? where job_id = ?", (why, job_id))
            self.db.execute("delete from chunks where job_id = ?", (job_id,))

    def delete_job(self, job_id: str) -> None:
        with self.db:
            self._delete(job_id)

    def end_job(self, job_id: str, owner: str, outcome: str, detail: str = "") -> None:
        """Drop the job's data, and remember that it ended, how and when (the latest
        MAX_ENDED_JOBS ends are kept)."""
        with self.db:
            self._delete(job_id)
            self.db.execute(
                "insert or replace into ended (job_id, owner, outcome, detail, ended_at) "
                "values (?, ?, ?, ?, ?)", (job_id, owner, outcome, detail, time.time()))
            self.db.execute("delete from ended where seq <= (select max(seq) from ended) - ?",
                            (MAX_ENDED_JOBS,))

    def _delete(self, job_id: str) -> None:
        for table in ("jobs", "chunks", "results", "logs"):
            self.db.execute(f"delete from {table} where job_id = ?", (job_id,))  # noqa: S608

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
                chunks.append((chunk_id, first, count, reported))
            stored.append(StoredJob(
                job_id, row[1], row[2], row[3], json.loads(row[4]), row[5], row[6], row[7],
                bool(row[8]), row[9], row[10], done, chunks,
            ))
        return stored


def _buffer(data: Any) -> Any:
    return data.buffer if hasattr(data, "buffer") else data
