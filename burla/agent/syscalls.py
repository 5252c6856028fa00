"""The Linux calls the sandbox makes through the running python's libc (mount, unshare,
prctl), and SandboxError, which names the step that failed and its errno."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
from collections.abc import Iterator

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_BIND, MS_REC, MS_PRIVATE = 0x1000, 0x4000, 0x40000
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38


class SandboxError(RuntimeError):
    """A sandbox step failed; the message names the step and the errno.

    The process is then half-sandboxed and may still be root: the caller must report the error
    and `os._exit` without running user code. Recover: fix the named cause (missing path, no
    CAP_SYS_ADMIN in a container, ...) or run the agent with sandboxing off.
    """

    def __init__(self, step: str, message: str, err: int | None = None) -> None:
        super().__init__(f"sandbox step {step!r} failed: {message}")
        self.step = step
        self.errno = err


@contextlib.contextmanager
def step(name: str) -> Iterator[None]:
    """Turn an OSError inside into a SandboxError naming this step and the errno."""
    try:
        yield
    except OSError as e:
        code = errno.errorcode.get(e.errno or 0, "no errno")
        raise SandboxError(name, f"{code}: {e.strerror or e}", e.errno) from e


@functools.cache
def libc() -> ctypes.CDLL:
    lib = ctypes.CDLL(None, use_errno=True)  # the running python's own libc: no lookup, no I/O
    lib.unshare.argtypes = [ctypes.c_int]
    lib.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
    lib.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
    return lib


def check(result: int) -> None:
    """Raise the OSError of errno if a libc call returned non-zero."""
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str = "") -> None:
    def enc(s: str | None) -> bytes | None:
        return s.encode() if s else None

    check(libc().mount(enc(source), enc(target), enc(fstype), flags, enc(data)))
