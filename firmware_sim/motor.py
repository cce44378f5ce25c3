"""The pump's motor: it moves the plunger, and it counts every move itself.

The count is the independent witness of the BRIEF's ``pumpsim status``
contract (``motor_pulses``): it is kept by the motor, outside the firmware's
storage, so a test can compare what the firmware's ledger says with what the
hardware did, even after the process was killed.  The reservoir is tracked by
the firmware (``delivery.py``), not here.

State machine
-------------

======== ============= ======== ==============================================
state    call          next     effect
======== ============= ======== ==============================================
OPEN     ``pulse()``   OPEN     record ``count + 1`` durably, then move
OPEN     ``close()``   CLOSED   release the witness file
CLOSED   ``close()``   CLOSED   nothing
CLOSED   ``pulse()``   --       :class:`MotorError`
======== ============= ======== ==============================================

Witness file (``Motor.open(path)``)
-----------------------------------

Two fixed 16-byte slots; the count ``n`` is written to slot ``n % 2``::

    slot = "PGM1" (4) || n (u64, big-endian) || CRC-32(magic || n) (u32, big-endian)

Each pulse overwrites the *older* slot with the new count and calls
``fsync`` before the plunger moves, so the file is bounded (32 bytes, for
ever) and a power cut or SIGKILL at any instant leaves either the old or the
new slot intact:

* a slot that is all zero bytes (or absent) is *empty*; one whose magic or
  CRC is wrong, or whose count has the wrong parity for its position, is
  *torn* (the write in flight when power was lost);
* the count is the larger intact slot; the two intact slots must differ by
  exactly one; at most one slot may be torn; an empty slot 0 is only possible
  beside a count of 1 (or nothing) in slot 1.  Anything else is
  :class:`WitnessCorrupt` -- never a silent 0.

Recording *before* moving makes the witness an upper bound: it may count the
one pulse in flight at a power cut that never moved, but it never misses a
pulse that moved.  An over-delivery is therefore always visible.

>>> motor = Motor.in_memory()
>>> motor.pulse(); motor.pulse()
>>> motor.pulses
2
"""

from __future__ import annotations

import os
import struct
import sys
import zlib
from types import TracebackType
from typing import Final

if sys.platform != "win32":
    import fcntl

__all__ = ["Motor", "MotorBusy", "MotorError", "WitnessCorrupt"]

_MAGIC: Final = b"PGM1"
_SLOT: Final = struct.Struct(">4sQI")
SLOT_LEN: Final = _SLOT.size
FILE_LEN: Final = 2 * SLOT_LEN
_EMPTY: Final = -1
_TORN: Final = -2


class MotorError(Exception):
    """The motor cannot move, or its witness cannot be kept."""


class MotorBusy(MotorError):
    """Another process already drives the motor behind this witness file."""


class WitnessCorrupt(MotorError):
    """The witness file is not a state that any sequence of pulses and one
    power cut can leave behind.  The pulse count is unknown; nothing may
    treat it as zero."""


def _encode_slot(count: int) -> bytes:
    head = _MAGIC + count.to_bytes(8, "big")
    return _SLOT.pack(_MAGIC, count, zlib.crc32(head))


def _decode_slot(raw: bytes, index: int) -> int:
    """A slot's count, or ``_EMPTY`` / ``_TORN``."""
    if not any(raw):
        return _EMPTY
    if len(raw) != SLOT_LEN:
        return _TORN
    magic, count, crc = _SLOT.unpack(raw)
    if magic != _MAGIC or crc != zlib.crc32(raw[:12]) or count % 2 != index:
        return _TORN
    return int(count)


def _count_from_bytes(data: bytes) -> int:
    """The pulse count a witness file's contents prove (see module docstring).

    Raises:
        WitnessCorrupt: if no pulse sequence plus one torn write explains it.
    """
    if len(data) > FILE_LEN:
        raise WitnessCorrupt(f"witness file is {len(data)} bytes, expected at most {FILE_LEN}")
    even = _decode_slot(data[:SLOT_LEN], 0)
    odd = _decode_slot(data[SLOT_LEN:FILE_LEN], 1)
    intact = [c for c in (even, odd) if c >= 0]
    if len(intact) == 2:
        if abs(even - odd) != 1:
            raise WitnessCorrupt("witness slots are not consecutive counts")
        return max(intact)
    if len(intact) == 1:
        count = intact[0]
        other = odd if count == even else even
        if other == _EMPTY and count != 1:
            raise WitnessCorrupt("witness slot 0 is empty beside a count other than 1")
        # The other slot is torn: it was the write in flight (or the older
        # value, already superseded).  Either way the intact one is the count.
        return count
    if even == _EMPTY and odd in (_EMPTY, _TORN):
        # Never written, or the very first pulse's write was cut.
        return 0
    raise WitnessCorrupt("witness file has no intact slot")


class Motor:
    """The plunger motor and its pulse counter.

    Build one with :meth:`open` (a durable witness file) or :meth:`in_memory`
    (tests).  ``pulse()`` moves one pulse (``wire.PULSE_MILLIUNITS``).
    """

    def __init__(self, count: int, fd: int | None) -> None:
        """Internal: use :meth:`open` or :meth:`in_memory`."""
        self._count = count
        self._fd = fd
        self._durable = fd is not None
        self._closed = False

    # --- construction -------------------------------------------------------

    @classmethod
    def in_memory(cls, pulses: int = 0) -> Motor:
        """A motor whose count lives only in this object (for tests)."""
        if pulses < 0:
            raise ValueError("pulse count cannot be negative")
        return cls(pulses, None)

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Motor:
        """Drive the motor whose witness is the file at ``path``.

        The file is created (32 bytes at most, mode 0600) if missing; an
        existing count carries on.

        Raises:
            WitnessCorrupt: the file holds no provable count.
            MotorBusy: another process holds the file.
            OSError: the file cannot be opened.
        """
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if sys.platform != "win32":
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise MotorBusy(f"motor witness {os.fspath(path)!r} is in use") from None
            count = _count_from_bytes(os.pread(fd, FILE_LEN + 1, 0))
            # Make the file's directory entry durable too, once.
            parent = os.path.dirname(os.path.abspath(path))
            dir_fd = os.open(parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except BaseException:
            os.close(fd)
            raise
        return cls(count, fd)

    @staticmethod
    def read_count(path: str | os.PathLike[str]) -> int:
        """The pulse count recorded in the witness file at ``path``, offline.

        A missing file is a motor that never moved (0).  Safe to call while a
        pump runs: a slot read mid-write looks torn and the other one counts.

        Raises:
            WitnessCorrupt: the file holds no provable count.
        """
        try:
            with open(path, "rb") as f:
                data = f.read(FILE_LEN + 1)
        except FileNotFoundError:
            return 0
        return _count_from_bytes(data)

    # --- operation ----------------------------------------------------------

    @property
    def pulses(self) -> int:
        """Every pulse this motor has made (recorded), over its whole life."""
        return self._count

    @property
    def durable(self) -> bool:
        """Whether the count survives the process (a witness file)."""
        return self._durable

    def pulse(self) -> None:
        """Move the plunger one pulse, recording it first.

        Raises:
            MotorError: the motor was closed.
            OSError: the witness could not be written; the motor did not
                move, but the count on disk may include this pulse.
        """
        if self._closed:
            raise MotorError("motor is closed")
        count = self._count + 1
        if self._fd is not None:
            os.pwrite(self._fd, _encode_slot(count), (count % 2) * SLOT_LEN)
            os.fsync(self._fd)
        # The simulated plunger moves here, after the record is durable.
        self._count = count

    def close(self) -> None:
        """Release the witness file.  Further pulses raise :class:`MotorError`."""
        self._closed = True
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def __enter__(self) -> Motor:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        kind = "file" if self._durable else "memory"
        return f"Motor(pulses={self._count}, witness={kind})"
