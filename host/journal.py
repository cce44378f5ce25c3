"""The remote's pending-command journal (S7: exactly once, outcome always learned).

A bolus whose reply is lost, or whose remote is killed mid-command, has an
outcome the remote does not know.  Retrying under a *new* command id could
deliver twice; forgetting it could hide a delivery from the user.  So the
remote writes the command id and dose here, durably, *before* the first
byte of the command is sent, and marks it settled only when the pump has
reported the real outcome.  After a restart, :meth:`Journal.pending` lists
what must be asked about (``COMMAND_QUERY``) or retried under the same id,
which the pump executes at most once.

File format (``journal.log`` in the keys directory), append-only lines::

    <crc32 of JSON, 8 hex digits> <compact JSON object>\\n

The first line is a header (``{"op":"journal","format":1}``); the others are
``pending`` (id, pulses, time, and ``seq`` for an id from the counter below),
``evicted`` (id: the pump answered that it no longer holds the outcome),
``settle`` (id, outcome, delivered, time), ``seq`` (next: the counter moved
on without a command, to continue after the pump's high-water mark), and
after compaction ``settled`` (pending and settle in one).  Every append is
``fsync``-ed before the call returns.

Command ids and their counter
-----------------------------

:meth:`Journal.new_command` draws ids as ``seq (8 bytes, big-endian) ||
random (8 bytes)`` (SPEC §12.4), ``seq`` counting up from 1.  The counter is
the journal itself: one more than the highest ``seq`` of a ``pending`` line
or a ``seq`` line, so it is durable with the id before the id is sent, and
compaction writes it as a ``seq`` line.  Ids recorded with
:meth:`Journal.record_pending` (no ``seq`` field) do not move it.

An evicted command
------------------

A pump answers *evicted* for an id whose outcome it no longer holds: it may
have been delivered.  The journal keeps such a command pending, marked
``evicted``, so no new bolus is sent, until the pump's audit log settles it
(``pumpctl history``): with the outcome its log records, or, if the log no
longer holds it either, as ``evicted`` -- outcome unknown, never "not
delivered".

An outcome is a protocol :class:`~pumpguard.protocol.Outcome`, stored as a
lower-case word so the file stays readable: ``delivered``, ``cancelled``,
``interrupted``, ``not_delivered`` for :attr:`~pumpguard.protocol.Outcome.UNKNOWN`
(the pump never committed the command), and ``evicted`` for
:attr:`~pumpguard.protocol.Outcome.EVICTED` (unknown: neither the pump's
outcomes nor its log hold it any more; ``delivered`` is then 0, meaning
unknown).  Journals written before outcomes
were typed may also hold ``refused`` and ``unknown``; both meant the pump
never committed the command and load as ``UNKNOWN``.  Any other word is
corruption (below).

Why a torn last line is safe to drop, and nothing else is:

* A power cut during an append leaves at most one incomplete line, the
  last, without its newline.  Its call never returned, so a torn
  ``pending`` was never sent to the pump, and a torn ``settle`` only puts
  the command back in :meth:`~Journal.pending`, where the pump is asked
  again.  :meth:`Journal.open` truncates it away so later appends start on
  a clean line.
* Any other damage -- a complete line with a bad checksum, a line in the
  middle that does not parse, a settle of an unknown id -- may hide an
  unsettled bolus.  It raises :class:`JournalError` and the file is left
  untouched for the user to inspect.

Bounded: at most :data:`MAX_PENDING` unsettled commands; settled entries
are compacted away (atomic rewrite) keeping the last :data:`MAX_SETTLED_KEPT`
for display.  A lock file keeps two remotes from interleaving one journal.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import reprlib
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from pumpguard.protocol import Outcome, wire

from .keystore import atomic_write

__all__ = [
    "JOURNAL_FILE",
    "LOCK_FILE",
    "MAX_PENDING",
    "MAX_SETTLED_KEPT",
    "Journal",
    "JournalError",
    "PendingCommand",
    "SettledCommand",
    "outcome_word",
]

JOURNAL_FILE: Final = "journal.log"
LOCK_FILE: Final = "journal.lock"
JOURNAL_FORMAT: Final = 1
#: Unsettled commands the journal holds before it refuses new ones.
MAX_PENDING: Final = 64
#: Settled commands kept for display after compaction.
MAX_SETTLED_KEPT: Final = 64
#: Settled entries in the file that trigger a compaction.
_COMPACT_AT: Final = 2 * MAX_SETTLED_KEPT
#: A compacted journal is a few tens of kilobytes; anything near this is not ours.
_MAX_FILE: Final = 1 << 20
#: The word stored for each outcome a settled command can have.  IN_PROGRESS
#: is not one: a command is settled only once the pump has finished with it.
_WORD_OF: Final[dict[Outcome, str]] = {
    Outcome.UNKNOWN: "not_delivered",
    Outcome.DELIVERED: "delivered",
    Outcome.CANCELLED: "cancelled",
    Outcome.INTERRUPTED: "interrupted",
    Outcome.EVICTED: "evicted",
}
#: Words read back: the ones written, plus those earlier versions wrote for
#: a command the pump never committed (a refused bolus; an UNKNOWN answer
#: while following one).
_OUTCOME_OF: Final[dict[str, Outcome]] = {word: outcome for outcome, word in _WORD_OF.items()} | {
    "refused": Outcome.UNKNOWN,
    "unknown": Outcome.UNKNOWN,
}
_HEADER: Final = {"op": "journal", "format": JOURNAL_FORMAT}


class JournalError(Exception):
    """The journal cannot be read or written safely.  One line for the user."""


@dataclass(frozen=True)
class PendingCommand:
    """A command recorded before sending whose outcome is not yet known."""

    command_id: bytes
    pulses: int
    #: Wall-clock time it was recorded (seconds since the epoch), for display.
    recorded_at: float
    #: The pump answered that it no longer holds this command's outcome: it
    #: may have been delivered.  Settled only from the pump's audit log.
    evicted: bool = False


@dataclass(frozen=True)
class SettledCommand:
    """A command whose real outcome the pump has reported."""

    command_id: bytes
    pulses: int
    recorded_at: float
    #: What the pump reports became of it; never ``IN_PROGRESS``.  ``UNKNOWN``
    #: means the pump never committed it, so nothing was delivered;
    #: ``EVICTED`` means nobody can tell any more (possibly delivered).
    outcome: Outcome
    #: Pulses the pump reports as delivered (0 and meaningless for ``EVICTED``).
    delivered: int
    settled_at: float


def _encode_line(entry: dict[str, Any]) -> bytes:
    payload = json.dumps(entry, separators=(",", ":"), sort_keys=True).encode()
    return b"%08x %s\n" % (zlib.crc32(payload), payload)


def outcome_word(outcome: Outcome) -> str:
    """The word the journal stores for a settled ``outcome``, e.g. ``"not_delivered"``."""
    return _WORD_OF[outcome]


class _Corrupt(Exception):
    """One line failed to parse; becomes a :class:`JournalError` with its number."""


def _field_int(entry: dict[str, Any], name: str, minimum: int) -> int:
    value = entry.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise _Corrupt(f"bad {name}")
    return value


def _field_time(entry: dict[str, Any], name: str) -> float:
    value = entry.get(name)
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise _Corrupt(f"bad {name}")
    return float(value)


def _field_id(entry: dict[str, Any]) -> bytes:
    value = entry.get("id")
    if not isinstance(value, str):
        raise _Corrupt("bad id")
    try:
        command_id = bytes.fromhex(value)
    except ValueError:
        raise _Corrupt("bad id") from None
    if len(command_id) != wire.COMMAND_ID_LEN:
        raise _Corrupt("bad id")
    return command_id


def _field_seq(entry: dict[str, Any], command_id: bytes) -> int | None:
    """A ``pending`` line's optional ``seq``: the id's counter value, if drawn from it."""
    if "seq" not in entry:
        return None
    seq = _field_int(entry, "seq", 1)
    if seq != command_seq(command_id):
        raise _Corrupt("seq does not match the id")
    return seq


def command_seq(command_id: bytes) -> int:
    """The per-remote sequence number at the start of a command id (SPEC §12.4)."""
    return int.from_bytes(command_id[: wire.COMMAND_SEQ_LEN], "big")


def _field_outcome(entry: dict[str, Any]) -> Outcome:
    value = entry.get("outcome")
    outcome = _OUTCOME_OF.get(value) if isinstance(value, str) else None
    if outcome is None:
        raise _Corrupt(f"unknown outcome {reprlib.repr(value)}")
    return outcome


def _decode_line(line: bytes) -> dict[str, Any]:
    if len(line) < 10 or line[8:9] != b" ":
        raise _Corrupt("not a journal line")
    checksum, payload = line[:8], line[9:]
    try:
        expected = int(checksum, 16)
    except ValueError:
        raise _Corrupt("bad checksum field") from None
    if zlib.crc32(payload) != expected:
        raise _Corrupt("checksum mismatch")
    try:
        entry = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise _Corrupt("not JSON") from None
    if not isinstance(entry, dict):
        raise _Corrupt("not a JSON object")
    return entry


class Journal:
    """The pending-command journal of one keys directory.  Open with :meth:`open`.

    Hold it open for the whole command: it keeps ``journal.lock`` locked so a
    second ``pumpctl`` on the same directory fails fast instead of losing
    entries.  A failed write makes the journal unusable (sticky) until it is
    reopened, which repairs a torn tail.
    """

    def __init__(self, directory: Path, clock: Callable[[], float]) -> None:
        self._dir = directory
        self._path = directory / JOURNAL_FILE
        self._clock = clock
        self._fd = -1
        self._lock_fd = -1
        self._pending: dict[bytes, PendingCommand] = {}
        self._settled: list[SettledCommand] = []
        self._settled_in_file = 0
        self._failure: str | None = None
        #: The seq the next :meth:`new_command` uses.
        self._next_seq = 1

    @classmethod
    def open(
        cls, keys_dir: str | os.PathLike[str], *, clock: Callable[[], float] = time.time
    ) -> Journal:
        """Open (or create) the journal in ``keys_dir`` and load it.

        ``clock`` gives the wall-clock times shown to the user; it orders
        nothing.

        Raises:
            JournalError: the journal is corrupt, in use, or cannot be opened.
        """
        directory = Path(keys_dir)
        if not directory.is_dir():
            raise JournalError(f"keys directory {directory} does not exist or is not a directory")
        journal = cls(directory, clock)
        try:
            journal._lock()
            journal._load()
        except BaseException:
            journal.close()
            raise
        return journal

    # -- opening --

    def _lock(self) -> None:
        lock_path = self._dir / LOCK_FILE
        try:
            self._lock_fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise JournalError(f"cannot open {lock_path}: {exc.strerror}") from None
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks; one remote per directory.
            return
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise JournalError(
                f"journal in {self._dir} is in use by another pumpctl; wait for it to finish"
            ) from None
        except OSError as exc:
            raise JournalError(f"cannot lock {lock_path}: {exc.strerror}") from None

    def _load(self) -> None:
        path = self._path
        try:
            if not path.exists():
                atomic_write(path, _encode_line(dict(_HEADER)))
            self._fd = os.open(path, os.O_RDWR | os.O_APPEND)
            size = os.fstat(self._fd).st_size
            if size > _MAX_FILE:
                raise JournalError(f"journal {path} is corrupt (too large); it was left as is")
            content = os.pread(self._fd, size, 0)
        except OSError as exc:
            raise JournalError(f"cannot open journal {path}: {exc.strerror}") from None
        *lines, tail = content.split(b"\n")
        if not lines:
            raise JournalError(f"journal {path} is corrupt (no header); it was left as is")
        for number, line in enumerate(lines, start=1):
            try:
                self._apply(number, _decode_line(line))
            except _Corrupt as exc:
                raise JournalError(
                    f"journal {path} is corrupt at line {number} ({exc}); it may record a bolus "
                    "whose outcome is unknown, so it was left as is: check the pump's history, "
                    "then move the file away"
                ) from None
        if tail:
            # A torn append from a power cut: its call never returned (module docstring).
            try:
                os.ftruncate(self._fd, size - len(tail))
                os.fsync(self._fd)
            except OSError as exc:
                raise JournalError(f"cannot repair journal {path}: {exc.strerror}") from None

    def _apply(self, number: int, entry: dict[str, Any]) -> None:
        op = entry.get("op")
        if number == 1:
            if entry != _HEADER:
                raise _Corrupt("not a pumpguard journal, or an unknown format")
            return
        if op == "pending":
            command_id = _field_id(entry)
            if self._known(command_id):
                raise _Corrupt("command id recorded twice")
            seq = _field_seq(entry, command_id)
            if seq is not None:
                self._next_seq = max(self._next_seq, seq + 1)
            self._pending[command_id] = PendingCommand(
                command_id=command_id,
                pulses=_field_int(entry, "pulses", 1),
                recorded_at=_field_time(entry, "at"),
            )
        elif op == "evicted":
            command_id = _field_id(entry)
            marked = self._pending.get(command_id)
            if marked is None:
                raise _Corrupt("marks a command that is not pending")
            self._pending[command_id] = dataclasses.replace(marked, evicted=True)
        elif op == "seq":
            self._next_seq = max(self._next_seq, _field_int(entry, "next", 1))
        elif op == "settle":
            command_id = _field_id(entry)
            pending = self._pending.pop(command_id, None)
            if pending is None:
                raise _Corrupt("settles a command that is not pending")
            self._add_settled(
                pending,
                outcome=_field_outcome(entry),
                delivered=_field_int(entry, "delivered", 0),
                settled_at=_field_time(entry, "at"),
            )
        elif op == "settled":
            command_id = _field_id(entry)
            if self._known(command_id):
                raise _Corrupt("command id recorded twice")
            self._add_settled(
                PendingCommand(
                    command_id=command_id,
                    pulses=_field_int(entry, "pulses", 1),
                    recorded_at=_field_time(entry, "at"),
                ),
                outcome=_field_outcome(entry),
                delivered=_field_int(entry, "delivered", 0),
                settled_at=_field_time(entry, "settled_at"),
            )
        else:
            raise _Corrupt("unknown entry")
        if len(self._pending) > MAX_PENDING:
            raise _Corrupt("more unsettled commands than a journal holds")

    def _known(self, command_id: bytes) -> bool:
        return command_id in self._pending or any(
            settled.command_id == command_id for settled in self._settled
        )

    def _add_settled(
        self, pending: PendingCommand, *, outcome: Outcome, delivered: int, settled_at: float
    ) -> None:
        self._settled.append(
            SettledCommand(
                command_id=pending.command_id,
                pulses=pending.pulses,
                recorded_at=pending.recorded_at,
                outcome=outcome,
                delivered=delivered,
                settled_at=settled_at,
            )
        )
        self._settled_in_file += 1
        # Memory stays bounded even before the file is compacted.
        del self._settled[:-MAX_SETTLED_KEPT]

    # -- queries --

    @property
    def path(self) -> Path:
        return self._path

    def pending(self) -> list[PendingCommand]:
        """Commands recorded but not settled, oldest first."""
        return list(self._pending.values())

    @property
    def next_seq(self) -> int:
        """The seq :meth:`new_command` gives the next command id."""
        return self._next_seq

    def settled(self) -> list[SettledCommand]:
        """The most recent settled commands (up to :data:`MAX_SETTLED_KEPT`), oldest first."""
        return list(self._settled)

    # -- updates --

    def _usable(self) -> None:
        if self._fd < 0:
            raise JournalError("journal is closed")
        if self._failure is not None:
            raise JournalError(f"journal unusable after an earlier failure ({self._failure})")

    def _append(self, entry: dict[str, Any]) -> None:
        line = _encode_line(entry)
        try:
            view = memoryview(line)
            while view:
                view = view[os.write(self._fd, view) :]
            os.fsync(self._fd)
        except OSError as exc:
            # The file may now end in a partial line; only a reopen repairs it.
            self._failure = f"write failed: {exc.strerror}"
            raise JournalError(f"cannot write journal {self._path}: {exc.strerror}") from None

    def record_pending(self, command_id: bytes, pulses: int) -> PendingCommand:
        """Record a command durably.  Call before its first byte is sent.

        Raises:
            ValueError: a bad id length or pulse count (a caller bug).
            JournalError: the id is already in the journal, too many commands
                are unsettled, or the write failed (then do not send).
        """
        if len(command_id) != wire.COMMAND_ID_LEN:
            raise ValueError(f"command id must be {wire.COMMAND_ID_LEN} bytes")
        return self._record(command_id, pulses, None)

    def _record(self, command_id: bytes, pulses: int, seq: int | None) -> PendingCommand:
        if not isinstance(pulses, int) or isinstance(pulses, bool) or pulses < 1:
            raise ValueError("pulses must be a positive integer")
        self._usable()
        if self._known(command_id):
            raise JournalError("command id is already in the journal")
        if self._settled_in_file >= _COMPACT_AT:
            self._compact()
        if len(self._pending) >= MAX_PENDING:
            raise JournalError(
                f"{MAX_PENDING} commands are still unsettled; settle them before sending more"
            )
        command = PendingCommand(command_id=command_id, pulses=pulses, recorded_at=self._clock())
        line: dict[str, Any] = {
            "op": "pending",
            "id": command_id.hex(),
            "pulses": pulses,
            "at": command.recorded_at,
        }
        if seq is not None:
            line["seq"] = seq
        self._append(line)
        self._pending[command_id] = command
        return command

    def new_command(self, pulses: int, random_bytes: Callable[[int], bytes]) -> PendingCommand:
        """Draw the next command id from the counter and record it durably
        (SPEC §12.4: ``seq || random``).  Call before its first byte is sent.

        Raises:
            As :meth:`record_pending`; JournalError also when the counter is
            exhausted.
        """
        seq = self._next_seq
        if seq > wire.MAX_COMMAND_SEQ:
            raise JournalError("command sequence exhausted: pair this remote again")
        command_id = seq.to_bytes(wire.COMMAND_SEQ_LEN, "big") + random_bytes(
            wire.COMMAND_NONCE_LEN
        )
        command = self._record(command_id, pulses, seq)
        self._next_seq = seq + 1
        return command

    def advance_seq(self, next_seq: int) -> None:
        """Make the next command's seq at least ``next_seq`` (the pump refused
        an id as stale: its high-water mark is ahead of this journal).

        Raises:
            JournalError: the write failed.
        """
        if next_seq <= self._next_seq:
            return
        self._usable()
        self._append({"op": "seq", "next": next_seq})
        self._next_seq = next_seq

    def mark_evicted(self, command_id: bytes) -> PendingCommand:
        """Record that the pump no longer holds this pending command's outcome.

        It stays pending (it may have been delivered) until
        :meth:`settle` records what the pump's audit log says.

        Raises:
            JournalError: the command is not pending, or the write failed.
        """
        self._usable()
        pending = self._pending.get(command_id)
        if pending is None:
            raise JournalError("no unsettled command has this id")
        if pending.evicted:
            return pending
        self._append({"op": "evicted", "id": command_id.hex()})
        marked = dataclasses.replace(pending, evicted=True)
        self._pending[command_id] = marked
        return marked

    def settle(self, command_id: bytes, outcome: Outcome, delivered: int) -> SettledCommand:
        """Record the real outcome the pump reported for a pending command.

        Raises:
            ValueError: ``IN_PROGRESS`` or not an :class:`Outcome`, a bad
                delivered count, or ``UNKNOWN`` for a command marked evicted
                (a caller bug).
            JournalError: the command is not pending, or the write failed.
        """
        if not isinstance(outcome, Outcome) or outcome not in _WORD_OF:
            raise ValueError("outcome must be a final Outcome (not IN_PROGRESS)")
        if not isinstance(delivered, int) or isinstance(delivered, bool) or delivered < 0:
            raise ValueError("delivered must be a non-negative integer")
        self._usable()
        pending = self._pending.get(command_id)
        if pending is None:
            raise JournalError("no unsettled command has this id")
        if pending.evicted and outcome is Outcome.UNKNOWN:
            # The pump said it may have executed it: never "not delivered".
            raise ValueError("an evicted command cannot be settled as not delivered")
        settled_at = self._clock()
        self._append(
            {
                "op": "settle",
                "id": command_id.hex(),
                "outcome": outcome_word(outcome),
                "delivered": delivered,
                "at": settled_at,
            }
        )
        del self._pending[command_id]
        self._add_settled(pending, outcome=outcome, delivered=delivered, settled_at=settled_at)
        return self._settled[-1]

    def _compact(self) -> None:
        """Rewrite the file with only the unsettled and the recent settled commands.

        Runs before a new command is recorded, never after a settle, so a
        failure here never casts doubt on an outcome already written.
        """
        lines = [_encode_line(dict(_HEADER)), _encode_line({"op": "seq", "next": self._next_seq})]
        lines += [
            _encode_line(
                {
                    "op": "settled",
                    "id": s.command_id.hex(),
                    "pulses": s.pulses,
                    "at": s.recorded_at,
                    "outcome": outcome_word(s.outcome),
                    "delivered": s.delivered,
                    "settled_at": s.settled_at,
                }
            )
            for s in self._settled
        ]
        lines += [
            _encode_line(
                {"op": "pending", "id": p.command_id.hex(), "pulses": p.pulses, "at": p.recorded_at}
            )
            for p in self._pending.values()
        ]
        lines += [
            _encode_line({"op": "evicted", "id": p.command_id.hex()})
            for p in self._pending.values()
            if p.evicted
        ]
        try:
            atomic_write(self._path, b"".join(lines))
        except OSError as exc:
            # The old file is intact and still ours: nothing is lost, but do
            # not send a new command on a disk that cannot be written.
            raise JournalError(f"cannot compact journal {self._path}: {exc.strerror}") from None
        try:
            new_fd = os.open(self._path, os.O_RDWR | os.O_APPEND)
        except OSError as exc:
            # Our descriptor names the replaced file now; appends would be lost.
            self._failure = f"reopen after compaction failed: {exc.strerror}"
            raise JournalError(f"cannot reopen journal {self._path}: {exc.strerror}") from None
        os.close(self._fd)
        self._fd = new_fd
        self._settled_in_file = len(self._settled)

    # -- lifetime --

    def close(self) -> None:
        """Close the file and release the lock.  Idempotent."""
        for fd in (self._fd, self._lock_fd):
            if fd >= 0:
                # Every entry was fsync-ed when written; a failing close loses nothing.
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._fd = self._lock_fd = -1

    def __enter__(self) -> Journal:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Journal({str(self._path)!r}, {len(self._pending)} pending)"
