"""Job ids: a uuid4's 32 hex digits, made by the client. Checked wherever one comes from a person
or a client, so that a bad one is refused with a short message and never echoed whole."""

from __future__ import annotations

import re
import reprlib

_JOB_ID = re.compile(r"[0-9a-f]{32}")
# Most characters of a bad value that a message quotes.
SHOWN_CHARS = 40
_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = SHOWN_CHARS


def is_job_id(value: object) -> bool:
    return isinstance(value, str) and _JOB_ID.fullmatch(value) is not None


def shown(value: object) -> str:
    """`value` as a message may quote it: its repr, cut to about SHOWN_CHARS characters (with
    the length of a long text), and never built whole from a huge value."""
    text = _SHORT.repr(value)
    if len(text) > SHOWN_CHARS:
        text = text[:SHOWN_CHARS - 3] + "..."
    if isinstance(value, str | bytes) and len(value) > SHOWN_CHARS:
        text += f" ({len(value)} characters)"
    return text


def job_id_problem(value: object) -> str | None:
    """Why `value` is not a job id, in words that quote it short; None when it is one."""
    if is_job_id(value):
        return None
    return (f"{shown(value)} is not a burla job id: a job id is 32 hex digits, as printed when "
            f"a job was detached and as `burla jobs list` shows them")
