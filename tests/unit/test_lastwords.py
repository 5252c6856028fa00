"""The last-words journal and the zygote's reading of it: what an executor held unsent comes
back as entries tagged with their inputs, bounded, and a damaged journal never raises."""

from __future__ import annotations

import os

import pytest

from burla.exec import lastwords
from burla.exec.lastwords import Journal, Pipes, entries_record, held_record, pipe_record

pytestmark = pytest.mark.timeout(10)


def made() -> tuple[Pipes, Journal]:
    """Pipes as the zygote makes them, and the executor's journal over them, in one process."""
    pipes = Pipes.make()
    return pipes, Journal(os.dup(pipes.journal_fd))


def collected(pipes: Pipes) -> tuple[list[list[object]], int]:
    try:
        return lastwords.collect(pipes)
    finally:
        pipes.close(pipes.write_fds)


def test_entries_pipe_bytes_and_the_held_line_come_back_tagged_by_input() -> None:
    pipes, journal = made()
    sep = pipes.separator
    journal.append(entries_record([[3, 1, "printed by 3\n"]]))
    journal.append(pipe_record(1, b"fd 1 of 4\n" + sep + b"4\n" + b"fd 1 of 5, "))
    journal.append(held_record(5, 2, "half a line"))
    os.write(pipes.write_fds[0], b"then left in the pipe\n")
    entries, lost = collected(pipes)
    assert entries == [
        [3, 1, "printed by 3\n"],
        [4, 1, "fd 1 of 4\n"],
        [-1, 1, "fd 1 of 5, then left in the pipe\n"],  # -1: the input it died in
        [5, 2, "half a line"],
    ]
    assert lost == 0


def test_a_held_line_cleared_later_is_not_repeated() -> None:
    pipes, journal = made()
    journal.append(held_record(1, 1, "progress 10%"))
    journal.append(entries_record([[1, 1, "progress 10% done\n"]]))
    journal.append(held_record(-1, 1, ""))
    assert collected(pipes) == ([[1, 1, "progress 10% done\n"]], 0)


def test_reset_keeps_only_what_is_still_held() -> None:
    pipes, journal = made()
    journal.append(entries_record([[0, 1, "sent already\n"]]))
    journal.reset([pipe_record(2, b"unterminated")])
    journal.append(entries_record([[1, 1, "after the send\n"]]))
    entries, lost = collected(pipes)
    assert sorted(entries) == [[-1, 2, "unterminated"], [1, 1, "after the send\n"]]
    assert lost == 0


def test_a_full_journal_keeps_the_newest_output_and_counts_the_lines_it_lost() -> None:
    pipes, journal = made()
    line = "x" * 99 + "\n"
    for index in range(2000):  # 200 KB: more than a half holds
        journal.append(entries_record([[index, 1, line]]))
    entries, lost = collected(pipes)
    assert entries[-1] == [1999, 1, line]
    kept = [entry[0] for entry in entries]
    assert kept == list(range(2000 - len(kept), 2000))
    assert sum(len(str(e[2])) for e in entries) <= lastwords.MAX_LAST_WORDS_BYTES
    assert lost == 2000 - len(entries)


def test_a_damaged_journal_yields_what_parsed_before_the_damage() -> None:
    pipes, journal = made()
    journal.append(entries_record([[7, 1, "fine\n"]]))
    journal.append(b"\xc1\xc1 not msgpack")
    journal.append(entries_record([[8, 1, "after the damage\n"]]))
    entries, _ = collected(pipes)
    assert entries == [[7, 1, "fine\n"]]
    pipes2, journal2 = made()
    journal2.append(entries_record([[1, 1, "x\n"]]))
    os.pwrite(pipes2.journal_fd, b"\xff\xff\xff\x7f", 0)  # a length past the half's end
    assert collected(pipes2)[0] == [[1, 1, "x\n"]]


def test_records_of_the_wrong_shape_are_skipped() -> None:
    pipes, journal = made()
    journal.append(entries_record([[1, 9, "stream 9\n"]]))
    journal.append(entries_record([["one", 1, "index not a number\n"]]))
    journal.append(pipe_record(1, b"kept\n"))
    assert collected(pipes) == ([[-1, 1, "kept\n"]], 0)


def test_collect_closes_the_zygotes_fds() -> None:
    pipes, _journal = made()
    collected(pipes)
    for fd in (*pipes.read_fds, pipes.journal_fd):
        with pytest.raises(OSError):
            os.fstat(fd)


def test_the_output_fits_one_zygote_packet_however_it_was_written() -> None:
    from burla.exec.zygote import MAX_CRASH_REPORT_BYTES, MAX_EXITED_BYTES, pack

    pipes, journal = made()
    journal.append(pipe_record(1, "€".encode() * 40_000))  # 3 bytes a character
    journal.append(entries_record([[i, 1 + i % 2, "é"] for i in range(20_000)]))
    os.write(pipes.write_fds[1], "漢".encode() * 20_000)  # left in the pipe
    entries, lost = collected(pipes)
    assert entries[-1] == [-1, 2, "漢" * 20_000]  # the newest, whole
    assert lost > 0
    worst_crash = "\ufffd" * MAX_CRASH_REPORT_BYTES  # undecodable bytes, 3 bytes each in UTF-8
    packet = pack({"op": "exited", "id": "x" * 40, "pid": 1, "status": 9, "crash": worst_crash,
                   "output": entries, "lost": lost})
    assert len(packet) <= MAX_EXITED_BYTES
