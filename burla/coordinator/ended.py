"""What a client asking for a job that is no longer on the cluster is told, in words.

Pure: the store's record of how the job ended (or None) and the time in, a message out. Results
go to one client only, so a job is gone once collected; these say so instead of waiting. A job
the store lost, found corrupt and started empty, is unknown to it: the answer says so.
"""

from __future__ import annotations

import time

from burla import protocol
from burla.coordinator.jobstore import EndedJob
from burla.coordinator.storefile import StoreReset


def attach_refusal(record: EndedJob | None, owner: str, job_id: str, wall: float,
                   reset: StoreReset | None = None) -> protocol.Refuse:
    """The answer to an attach to `job_id`, which is not on the cluster; `wall`: Unix time now;
    `reset`: the latest time the job store was found corrupt and started empty, if ever."""
    if record is None or record.owner != owner:
        if reset is not None:
            return protocol.Refuse(
                "unknown_job", f"no job {job_id!r} of yours is on this cluster. If it was "
                f"detached before {_when(reset.at, wall)}, it was lost: the cluster's job store "
                f"was found corrupt then ({reset.reason}) and started empty, so the jobs it held "
                f"are gone; the corrupt file is kept at {reset.kept}. Run the job again. (Jobs "
                f"detached since are kept; `burla jobs list` shows them.)", job_id)
        return protocol.Refuse(
            "unknown_job", f"no job {job_id!r} of yours is on this cluster, and none by that id "
            f"ended on it lately. Check the id: burla.attach takes the one printed when the job "
            f"was detached, and `burla jobs list` shows the jobs kept.", job_id)
    when = _when(record.ended_at, wall)
    if record.outcome == "canceled":
        return protocol.Refuse(
            "canceled", f"job {job_id!r} was cancelled {when} ({record.detail}); its inputs "
            f"and results are gone.", job_id)
    return protocol.Refuse(
        "collected", f"job {job_id!r} was already collected {when}: another burla.attach, or "
        f"the process that started it, received all of its results, and the cluster keeps "
        f"results only until they are collected.", job_id)


def taken_over(job_id: str) -> protocol.JobFailed:
    """What a client following a job is told when another one attaches to it."""
    return protocol.JobFailed(
        job_id, "collected", f"another process attached to job {job_id!r} and collects its "
        f"results now; results go to one process only, so this one stopped following the job.")


def _when(ended_at: float, wall: float) -> str:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ended_at))
    seconds = max(0, round(wall - ended_at))
    if seconds < 120:
        ago = f"{seconds} s"
    elif seconds < 2 * 3600:
        ago = f"{seconds // 60} min"
    else:
        ago = f"{seconds // 3600} h"
    return f"at {stamp} ({ago} ago)"
