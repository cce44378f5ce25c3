"""The pending-command journal (host/journal.py; S7).

What these tests stop:

* a command sent before it was durably recorded (the fsync comes first);
* a pending command forgotten across a restart, a power cut (torn last
  line) or a compaction -- the remote must always learn its real outcome;
* corruption silently dropping entries: anything but a torn tail raises
  and leaves the file as it was;
* two remotes interleaving one journal, and a journal that grows forever.
"""

from __future__ import annotations

import itertools
import os
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

from pumpguard.host.journal import (
    JOURNAL_FILE,
    MAX_PENDING,
    MAX_SETTLED_KEPT,
    Journal,
    JournalError,
    PendingCommand,
    SettledCommand,
)
from pumpguard.protocol import Outcome


def command_id(number: int) -> bytes:
    return number.to_bytes(16, "big")


def ticking_clock(start: float = 1_700_000_000.0) -> Callable[[], float]:
    counter = itertools.count()
    return lambda: start + next(counter)


def open_journal(directory: Path) -> Journal:
    return Journal.open(directory, clock=ticking_clock())


def journal_lines(directory: Path) -> list[bytes]:
    return (directory / JOURNAL_FILE).read_bytes().split(b"\n")


def test_new_journal_is_empty(tmp_path: Path) -> None:
    with open_journal(tmp_path) as journal:
        assert journal.pending() == []
        assert journal.settled() == []
    assert (tmp_path / JOURNAL_FILE).exists()


def test_pending_survives_reopen_oldest_first(tmp_path: Path) -> None:
    with open_journal(tmp_path) as journal:
        first = journal.record_pending(command_id(1), 40)
        second = journal.record_pending(command_id(2), 7)
    with Journal.open(tmp_path) as reopened:
        assert reopened.pending() == [first, second]
        assert reopened.pending()[0] == PendingCommand(command_id(1), 40, first.recorded_at)


def test_settle_removes_from_pending_and_survives_reopen(tmp_path: Path) -> None:
    with open_journal(tmp_path) as journal:
        journal.record_pending(command_id(1), 40)
        journal.record_pending(command_id(2), 7)
        settled = journal.settle(command_id(1), Outcome.DELIVERED, 40)
        assert [command.command_id for command in journal.pending()] == [command_id(2)]
        assert settled.outcome is Outcome.DELIVERED
        assert settled.delivered == 40
        assert settled.pulses == 40
    with Journal.open(tmp_path) as reopened:
        assert [command.command_id for command in reopened.pending()] == [command_id(2)]
        assert reopened.settled() == [settled]


def test_record_is_fsynced_before_it_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = open_journal(tmp_path)
    synced: list[bytes] = []
    real_fsync = os.fsync

    def spy_fsync(fd: int) -> None:
        real_fsync(fd)
        synced.append((tmp_path / JOURNAL_FILE).read_bytes())

    monkeypatch.setattr(os, "fsync", spy_fsync)
    journal.record_pending(command_id(9), 3)
    journal.close()
    assert synced
    assert command_id(9).hex().encode() in synced[-1]


@pytest.mark.parametrize("keep", [1, 20, -1])
def test_torn_last_line_is_ignored_and_repaired(tmp_path: Path, keep: int) -> None:
    with open_journal(tmp_path) as journal:
        journal.record_pending(command_id(1), 40)
        journal.record_pending(command_id(2), 5)
    path = tmp_path / JOURNAL_FILE
    intact = path.read_bytes()
    # The power cut: the start of a third record, without its newline.
    lines = intact.split(b"\n")
    with path.open("ab") as handle:
        handle.write(lines[1][:keep])
    with Journal.open(tmp_path) as reopened:
        assert [command.command_id for command in reopened.pending()] == [
            command_id(1),
            command_id(2),
        ]
        assert path.read_bytes() == intact  # the torn tail is gone
        reopened.record_pending(command_id(3), 1)  # and appends start on a clean line
    with Journal.open(tmp_path) as again:
        assert len(again.pending()) == 3


def test_torn_settle_puts_the_command_back_in_pending(tmp_path: Path) -> None:
    with open_journal(tmp_path) as journal:
        journal.record_pending(command_id(1), 40)
        journal.settle(command_id(1), Outcome.DELIVERED, 40)
    path = tmp_path / JOURNAL_FILE
    content = path.read_bytes()
    path.write_bytes(content[:-10])  # the settle line lost its end
    with Journal.open(tmp_path) as reopened:
        assert [command.command_id for command in reopened.pending()] == [command_id(1)]


def test_zero_filled_tail_is_a_torn_write(tmp_path: Path) -> None:
    with open_journal(tmp_path) as journal:
        journal.record_pending(command_id(1), 40)
    with (tmp_path / JOURNAL_FILE).open("ab") as handle:
        handle.write(bytes(4096))  # size grew, data never reached the disk
    with Journal.open(tmp_path) as reopened:
        assert len(reopened.pending()) == 1


def flip(line: bytes) -> bytes:
    """Change one digit inside the JSON (not the checksum)."""
    index = line.rindex(b"4")
    return line[:index] + b"5" + line[index + 1 :]


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda lines: [lines[0], flip(lines[1]), *lines[2:]], "checksum mismatch"),
        (lambda lines: [lines[0], lines[1], flip(lines[2]), lines[3]], "checksum mismatch"),
        (lambda lines: [lines[0], b"garbage", *lines[1:]], "not a journal line"),
        (lambda lines: [lines[0], b"zzzzzzzz {}", *lines[1:]], "bad checksum field"),
        (lambda lines: [lines[0], lines[1], lines[1], *lines[2:]], "recorded twice"),
        (lambda lines: [lines[0], lines[3], lines[1], lines[2]], "not pending"),
        (lambda lines: [lines[1], lines[0], *lines[2:]], "not a pumpguard journal"),
        (lambda lines: [b"", *lines], "not a journal line"),
        (lambda lines: [lines[0], b"", *lines[1:]], "not a journal line"),
    ],
)
def test_corruption_raises_and_leaves_the_file(
    tmp_path: Path, damage: Callable[[list[bytes]], list[bytes]], reason: str
) -> None:
    with open_journal(tmp_path) as journal:
        journal.record_pending(command_id(1), 40)
        journal.record_pending(command_id(2), 44)
        journal.settle(command_id(1), Outcome.DELIVERED, 40)
    path = tmp_path / JOURNAL_FILE
    lines = path.read_bytes().split(b"\n")[:-1]
    assert len(lines) == 4  # header, pending 1, pending 2, settle 1
    damaged = b"\n".join(damage(lines)) + b"\n"
    path.write_bytes(damaged)
    with pytest.raises(JournalError, match=reason) as caught:
        Journal.open(tmp_path)
    assert "left as is" in str(caught.value)
    assert path.read_bytes() == damaged


def test_empty_or_foreign_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / JOURNAL_FILE
    path.write_bytes(b"")
    with pytest.raises(JournalError, match="no header"):
        Journal.open(tmp_path)
    path.write_bytes(b"#!/bin/sh\necho hi\n")
    with pytest.raises(JournalError, match="line 1"):
        Journal.open(tmp_path)
    assert path.read_bytes() == b"#!/bin/sh\necho hi\n"


def test_id_reuse_and_unknown_settle_are_refused(tmp_path: Path) -> None:
    with open_journal(tmp_path) as journal:
        journal.record_pending(command_id(1), 40)
        with pytest.raises(JournalError, match="already"):
            journal.record_pending(command_id(1), 40)
        journal.settle(command_id(1), Outcome.CANCELLED, 12)
        with pytest.raises(JournalError, match="already"):
            journal.record_pending(command_id(1), 40)
        with pytest.raises(JournalError, match="no unsettled"):
            journal.settle(command_id(1), Outcome.DELIVERED, 40)
        with pytest.raises(JournalError, match="no unsettled"):
            journal.settle(command_id(2), Outcome.DELIVERED, 40)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda j: j.record_pending(b"short", 1), "16 bytes"),
        (lambda j: j.record_pending(command_id(5), 0), "positive"),
        (lambda j: j.record_pending(command_id(5), True), "positive"),
        (lambda j: j.settle(command_id(1), Outcome.IN_PROGRESS, 1), "not IN_PROGRESS"),
        (lambda j: j.settle(command_id(1), "delivered", 1), "final Outcome"),
        (lambda j: j.settle(command_id(1), int(Outcome.DELIVERED), 1), "final Outcome"),
        (lambda j: j.settle(command_id(1), Outcome.DELIVERED, -1), "non-negative"),
    ],
)
def test_bad_arguments_are_caller_bugs(
    tmp_path: Path, call: Callable[[Journal], object], message: str
) -> None:
    with open_journal(tmp_path) as journal:
        journal.record_pending(command_id(1), 40)
        before = (tmp_path / JOURNAL_FILE).read_bytes()
        with pytest.raises(ValueError, match=message):
            call(journal)
        assert (tmp_path / JOURNAL_FILE).read_bytes() == before


#: A journal as pumpguard 0.2.0 wrote it, when outcomes were free-form words:
#: three settled boluses compacted, then a bolus the pump never committed
#: ("not_delivered"), a refused one ("refused"), one the pump answered UNKNOWN
#: while it was followed ("unknown"), and one still pending.
OLD_FORMAT_JOURNAL = b"""\
91e9d7e5 {"format":1,"op":"journal"}
852f5707 {"at":1700000000.0,"delivered":40,"id":"00000000000000000000000000000001","op":"settled","outcome":"delivered","pulses":40,"settled_at":1700000001.0}
39ebb160 {"at":1700000002.0,"delivered":12,"id":"00000000000000000000000000000002","op":"settled","outcome":"cancelled","pulses":40,"settled_at":1700000003.0}
9de744ae {"at":1700000004.0,"delivered":3,"id":"00000000000000000000000000000003","op":"settled","outcome":"interrupted","pulses":40,"settled_at":1700000005.0}
49324799 {"at":1700000006.0,"id":"00000000000000000000000000000004","op":"pending","pulses":40}
c58fede5 {"at":1700000007.0,"delivered":0,"id":"00000000000000000000000000000004","op":"settle","outcome":"not_delivered"}
a32e8027 {"at":1700000008.0,"id":"00000000000000000000000000000005","op":"pending","pulses":40}
70f251ad {"at":1700000009.0,"delivered":0,"id":"00000000000000000000000000000005","op":"settle","outcome":"refused"}
2eff1eae {"at":1700000010.0,"id":"00000000000000000000000000000006","op":"pending","pulses":40}
98d6ef1a {"at":1700000011.0,"delivered":0,"id":"00000000000000000000000000000006","op":"settle","outcome":"unknown"}
79103a85 {"at":1700000012.0,"id":"00000000000000000000000000000007","op":"pending","pulses":20}
"""  # noqa: E501


def test_a_journal_in_the_old_format_still_loads(tmp_path: Path) -> None:
    path = tmp_path / JOURNAL_FILE
    path.write_bytes(OLD_FORMAT_JOURNAL)
    start = 1_700_000_000.0
    with Journal.open(tmp_path, clock=lambda: start + 13) as journal:
        assert journal.settled() == [
            SettledCommand(command_id(1), 40, start, Outcome.DELIVERED, 40, start + 1),
            SettledCommand(command_id(2), 40, start + 2, Outcome.CANCELLED, 12, start + 3),
            SettledCommand(command_id(3), 40, start + 4, Outcome.INTERRUPTED, 3, start + 5),
            # Never committed by the pump, whichever word said so: nothing delivered.
            SettledCommand(command_id(4), 40, start + 6, Outcome.UNKNOWN, 0, start + 7),
            SettledCommand(command_id(5), 40, start + 8, Outcome.UNKNOWN, 0, start + 9),
            SettledCommand(command_id(6), 40, start + 10, Outcome.UNKNOWN, 0, start + 11),
        ]
        assert journal.pending() == [PendingCommand(command_id(7), 20, start + 12)]
        journal.settle(command_id(7), Outcome.UNKNOWN, 0)
    # Appended in the same format: the old lines untouched, the word as before.
    assert path.read_bytes() == OLD_FORMAT_JOURNAL + _line(
        b'{"at":1700000013.0,"delivered":0,"id":"00000000000000000000000000000007",'
        b'"op":"settle","outcome":"not_delivered"}'
    )


def _line(payload: bytes) -> bytes:
    """A journal line with a valid checksum (built here, not by the journal)."""
    return b"%08x %s\n" % (zlib.crc32(payload), payload)


@pytest.mark.parametrize(
    ("outcome", "shown"),
    [
        (b'"exploded"', "'exploded'"),
        (b'"in_progress"', "'in_progress'"),  # never final: not a settled outcome
        (b'"Delivered"', "'Delivered'"),
        (b"2", "2"),
        (b"null", "None"),
    ],
)
def test_an_unknown_outcome_is_a_clear_corruption_error(
    tmp_path: Path, outcome: bytes, shown: str
) -> None:
    path = tmp_path / JOURNAL_FILE
    lines = OLD_FORMAT_JOURNAL.splitlines(keepends=True)
    lines[5] = _line(
        b'{"at":1700000007.0,"delivered":0,"id":"00000000000000000000000000000004",'
        b'"op":"settle","outcome":%s}' % outcome
    )
    damaged = b"".join(lines)
    path.write_bytes(damaged)
    with pytest.raises(JournalError) as caught:
        Journal.open(tmp_path)
    message = str(caught.value)
    assert f"is corrupt at line 6 (unknown outcome {shown});" in message
    assert "\n" not in message
    assert "left as is" in message
    assert path.read_bytes() == damaged  # nothing lost


def test_compaction_bounds_the_file_and_keeps_pending(tmp_path: Path) -> None:
    with open_journal(tmp_path) as journal:
        journal.record_pending(command_id(0), 99)  # stays unsettled throughout
        for number in range(1, 400):
            journal.record_pending(command_id(number), number % 50 + 1)
            journal.settle(command_id(number), Outcome.DELIVERED, number % 50 + 1)
        assert [command.command_id for command in journal.pending()] == [command_id(0)]
        recent = journal.settled()
        assert len(recent) == MAX_SETTLED_KEPT
        assert recent[-1].command_id == command_id(399)
    assert len(journal_lines(tmp_path)) <= 1 + 1 + 3 * MAX_SETTLED_KEPT + 2
    with Journal.open(tmp_path) as reopened:
        assert [command.command_id for command in reopened.pending()] == [command_id(0)]
        assert reopened.settled() == recent
        reopened.settle(command_id(0), Outcome.INTERRUPTED, 20)
        assert reopened.pending() == []


def test_pending_is_bounded(tmp_path: Path) -> None:
    with open_journal(tmp_path) as journal:
        for number in range(MAX_PENDING):
            journal.record_pending(command_id(number), 1)
        with pytest.raises(JournalError, match="unsettled"):
            journal.record_pending(command_id(MAX_PENDING), 1)
        journal.settle(command_id(0), Outcome.DELIVERED, 1)
        journal.record_pending(command_id(MAX_PENDING), 1)


@pytest.mark.skipif(os.name != "posix", reason="advisory locks are POSIX")
def test_second_open_is_refused_while_in_use(tmp_path: Path) -> None:
    first = open_journal(tmp_path)
    with pytest.raises(JournalError, match="in use"):
        Journal.open(tmp_path)
    first.close()
    first.close()  # idempotent
    with pytest.raises(JournalError, match="closed"):
        first.record_pending(command_id(1), 1)
    Journal.open(tmp_path).close()


def test_missing_keys_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(JournalError, match="does not exist"):
        Journal.open(tmp_path / "missing")


def test_failed_write_makes_the_journal_unusable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = open_journal(tmp_path)

    def failing_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(JournalError, match="Input/output error"):
        journal.record_pending(command_id(1), 1)
    monkeypatch.undo()
    assert journal.pending() == []  # never counted as recorded: do not send
    with pytest.raises(JournalError, match="earlier failure"):
        journal.record_pending(command_id(2), 1)
    journal.close()
