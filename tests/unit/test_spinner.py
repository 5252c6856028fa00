"""The status line and remote output on a terminal: exact frames, on a fake terminal.

Each test also replays what reached the terminal through a small VT100 model (`tests/vt.py`), so
it asserts what a person would see, not only which bytes went out.
"""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from burla.client.spinner import ERASE_LINE, Display, duration_text, rate_text
from tests.vt import Screen

pytestmark = pytest.mark.timeout(10)
WIDTH = 50


class FakeTerminal(io.StringIO):
    """stdout and stderr of a process on a terminal: one stream, and a tty."""

    def isatty(self) -> bool:
        return True


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@contextmanager
def on_terminal() -> Iterator[FakeTerminal]:
    """The process's stdout and stderr on one fake terminal, for the test's body (pytest puts
    its own capture back between a fixture's setup and the test, so no fixture can)."""
    fake = FakeTerminal()
    saved = sys.stdout, sys.stderr, os.environ.get("TERM")
    sys.stdout = sys.stderr = fake
    os.environ["TERM"] = "xterm"
    try:
        yield fake
    finally:
        sys.stdout, sys.stderr = saved[0], saved[1]
        if saved[2] is None:
            os.environ.pop("TERM", None)
        else:
            os.environ["TERM"] = saved[2]


def _display(terminal: FakeTerminal, clock: Clock, name: str = "f") -> Display:
    return Display(True, name, terminal=terminal, clock=clock, width=WIDTH, animate=False)


def test_the_callers_unterminated_line_is_never_wiped() -> None:
    with on_terminal() as terminal:
        clock = Clock()
        print("before:", end=" ")  # the caller's own line, waiting for its end
        with _display(terminal, clock) as display:
            display.update(total=2, running=2)
            display.tick()
            clock.now += 1
            display.tick()
        assert terminal.getvalue() == (
            "before: "
            + " " * WIDTH + "\r"  # a fresh line, whether or not the cursor was at a line start
            + ERASE_LINE + "⠋ f: 0/2 done · 2 running · 0s"
            + ERASE_LINE + "⠙ f: 0/2 done · 2 running · 1s"
            + ERASE_LINE
        )
        assert Screen(terminal.getvalue(), WIDTH).lines == ["before:", ""]


def test_on_an_empty_line_the_status_line_takes_no_extra_line() -> None:
    with on_terminal() as terminal:
        print("earlier output")
        with _display(terminal, Clock()) as display:
            display.update(total=1, running=1)
            display.tick()
            assert Screen(terminal.getvalue(), WIDTH).lines == [
                "earlier output", "⠋ f: 0/1 done · 1 running · 0s"]
        screen = Screen(terminal.getvalue(), WIDTH)
        assert screen.lines == ["earlier output", ""] and (screen.row, screen.col) == (1, 0)


def test_a_slow_jobs_rate_is_per_minute_and_the_last_frame_is_true() -> None:
    with on_terminal() as terminal:
        # Reported: `0/s` for the whole of a 19-second, 8-call job; its last frame was
        # `8/8 done · 2 running`.
        clock = Clock()
        with _display(terminal, clock) as display:
            display.update(total=8, running=8)
            clock.now += 10
            display.tick()
            clock.now += 9
            display.update(done=6, running=8)  # the coordinator still counts 8 slots
            display.tick()
            display.update(done=8, running=2)
        frames = terminal.getvalue().split(ERASE_LINE)[1:]
        assert frames == [
            "⠋ f: 0/8 done · 8 running · 10s",
            "⠙ f: 6/8 done · 19/min · 2 running · 19s",
            "✓ f: 8/8 done · 25/min · 0 running · 19s",  # drawn as soon as the job is complete
            "",  # and taken away at the end
        ]


def test_a_job_done_before_the_first_frame_leaves_the_terminal_alone() -> None:
    with on_terminal() as terminal:
        with _display(terminal, Clock()) as display:
            display.update(total=3, running=3)
            display.update(done=3)
        assert terminal.getvalue() == ""
        assert sys.stdout is terminal and sys.stderr is terminal


def test_a_remote_progress_bar_shows_at_once_and_is_never_drawn_over() -> None:
    with on_terminal() as terminal:
        clock = Clock()
        with _display(terminal, clock) as display:
            display.update(total=1, running=1)
            display.tick()
            display.write_logs([[0, 2, "\r 50%|#####     |"]])
            display.tick()  # mid-line: no frame
            assert Screen(terminal.getvalue(), WIDTH).lines == [" 50%|#####     |"]
            display.write_logs([[0, 2, "\r100%|##########|"], [0, 2, "\n"], [0, 1, "done\n"]])
            display.tick()
        frames_after_bar = terminal.getvalue().split("100%|##########|\n")[1]
        assert frames_after_bar == (
            "done\n" + ERASE_LINE + "⠹ f: 0/1 done · 1 running · 0s" + ERASE_LINE)
        assert Screen(terminal.getvalue(), WIDTH).lines == ["100%|##########|", "done", ""]


def test_the_callers_prints_during_the_job_go_above_the_status_line() -> None:
    with on_terminal() as terminal:
        with _display(terminal, Clock()) as display:
            display.update(total=4, running=4)
            display.tick()
            print("result 1")  # e.g. a generator=True loop printing what arrives
            print("partial", end="")
            display.tick()  # their line is not ended: no frame over it
            assert Screen(terminal.getvalue(), WIDTH).lines == ["result 1", "partial"]
            print(" and its end")
            display.tick()
            assert Screen(terminal.getvalue(), WIDTH).lines == [
                "result 1", "partial and its end", "⠹ f: 0/4 done · 4 running · 0s"]
        assert sys.stdout is terminal


def test_the_frame_never_wraps() -> None:
    with on_terminal() as terminal:
        with _display(terminal, Clock(), name="a_function_with_a_very_long_name") as display:
            display.update(total=10, running=2)
            display.tick()
            assert Screen(terminal.getvalue(), WIDTH).lines == [
                "⠋ a_function_with_a_very_long_name: 0/10 done · 2"]


def test_a_job_inside_a_job_leaves_the_status_line_to_the_outer_one() -> None:
    with on_terminal() as terminal:
        with _display(terminal, Clock()) as outer:
            outer.update(total=1, running=1)
            outer.tick()
            with _display(terminal, Clock(), name="inner") as inner:
                assert not inner.enabled
                inner.tick()
                inner.write_logs([[0, 1, "from inner\n"]])
            outer.tick()
        assert Screen(terminal.getvalue(), WIDTH).lines == ["from inner", ""]
        assert "inner:" not in terminal.getvalue()


def test_without_a_terminal_output_goes_straight_through(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    piped = io.StringIO()
    monkeypatch.setattr(sys, "stdout", piped)
    monkeypatch.setattr(sys, "stderr", piped)
    with Display(True, "f", terminal=piped, animate=False) as display:
        assert not display.enabled
        display.update(total=1, running=1)
        display.tick()
        display.write_logs([[0, 1, "no newline yet"]])
        assert piped.getvalue() == "no newline yet"
        display.update(done=1)
    assert piped.getvalue() == "no newline yet"


@pytest.mark.parametrize(("done", "seconds", "text"), [
    (8, 19.0, "25/min"),
    (1, 19.0, "3.2/min"),
    (3, 2.0, "1.5/s"),
    (50_000, 2.0, "25,000/s"),
    (1, 7200.0, "0.5/h"),
])
def test_the_rate_is_a_readable_number_for_fast_and_slow_calls(
    done: int, seconds: float, text: str,
) -> None:
    assert rate_text(done, seconds) == text


def test_durations_read_as_a_clock() -> None:
    assert [duration_text(s) for s in (0.4, 59.9, 61, 3599, 3700)] == [
        "0s", "59s", "1m01s", "59m59s", "1h01m"]


def test_growths_words_come_last_and_a_narrow_terminal_cuts_them_not_the_counts() -> None:
    clock = Clock()
    display = Display(True, "f", terminal=FakeTerminal(), clock=clock, width=WIDTH,
                      animate=False)
    display.update(total=9, running=0, status="booting 3× n2-standard-8: us-central1-a "
                                                "exhausted, trying us-central1-b")
    assert display.frame() == ("⠋ f: 0/9 done · 0 running · 0s · booting 3× n2-standard-8: "
                               "us-central1-a exhausted, trying us-central1-b")
    with on_terminal() as terminal:
        with _display(terminal, clock) as narrow:
            narrow.update(total=9, running=0, status=display.status)
            narrow.tick()
        assert Screen(terminal.getvalue().split("\r", 1)[1].removesuffix(ERASE_LINE),
                      WIDTH).lines == ["⠋ f: 0/9 done · 0 running · 0s · booting 3× n2-st"]
    display.update(status="")  # the nodes joined: nothing to say
    assert display.frame() == "⠋ f: 0/9 done · 0 running · 0s"
