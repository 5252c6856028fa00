"""The job thread's waker: a wake ends a poll at once, never blocks, and is harmless after the
job thread closed it."""

from __future__ import annotations

import select
import threading
import time

import pytest

from burla.client.waker import Waker

pytestmark = pytest.mark.timeout(10)


def test_a_wake_from_another_thread_ends_a_poll_at_once():
    waker = Waker()
    poller = select.poll()
    poller.register(waker.read_fd, select.POLLIN)
    threading.Timer(0.05, waker.wake).start()
    started = time.monotonic()
    assert poller.poll(5_000), "the poll was not woken"
    assert time.monotonic() - started < 4
    waker.drain()
    assert not poller.poll(0), "a drained waker still reads as woken"
    waker.close()


def test_wakes_never_block_and_are_harmless_after_close():
    waker = Waker()
    for _ in range(200_000):  # more than a pipe holds: the extra wakes are dropped
        waker.wake()
    waker.drain()
    waker.close()
    waker.wake()  # the job thread ended first: nothing to wake, and no fd to write
    waker.close()
