"""The wake-up a caller's thread gives a job thread blocked in its poll (a cancel, a leave)."""

from __future__ import annotations

import os
import threading


class Waker:
    """Interrupts the job thread's poll from the caller's thread (a cancel, a leave). A pipe,
    closed by the job thread as it ends, under a lock, so a late wake never writes to a closed
    (or reused) fd. Cheaper than a socket pair, which a small job paid for in every call."""

    def __init__(self) -> None:
        self.read_fd, self._write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        os.set_blocking(self._write_fd, False)
        self._lock = threading.Lock()

    def wake(self) -> None:
        with self._lock:
            if self._write_fd >= 0:
                try:
                    os.write(self._write_fd, b"\0")
                except BlockingIOError:  # the pipe is full of wakes: it is awake already
                    pass

    def drain(self) -> None:
        try:
            while os.read(self.read_fd, 4096):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        with self._lock:
            if self._write_fd >= 0:
                os.close(self.read_fd)
                os.close(self._write_fd)
                self._write_fd = -1
