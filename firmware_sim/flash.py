"""A simulated NOR flash: the pump's only persistent storage (SPEC §13).

The device has ``sector_count`` sectors of ``sector_size`` bytes, addressed
by byte offset from 0.  It behaves like a NOR part:

* ``erase(sector)`` sets every byte of one sector to ``0xFF``;
* ``program(offset, data)`` can only clear bits (1 -> 0).  Programming a byte
  that would need a 0 -> 1 transition raises :class:`FlashError` and changes
  nothing; programming the same value again is allowed (it changes nothing);
* ``read`` returns what is there.

Wear
----

Each sector endures ``endurance`` erase cycles (default
:data:`DEFAULT_ENDURANCE`, a common NOR rating).  The flash counts the erases
of every sector (:meth:`Flash.erase_count`); the erase after the last one the
sector endures fails with :class:`FlashWorn` and leaves the sector as it was,
and from then on the sector is *worn* (:meth:`Flash.is_worn`, the part's
status register): every erase or program touching it fails the same way,
changing nothing.  Reads still work.  A failed erase is not counted in
``operations``.  Wear lives in the ``Flash`` object, like the part itself:
an image file does not record it, so a reopened image starts unworn (the
simulation models wear within one run; :meth:`Flash.age` lets a test start
a sector near its end of life).

Layout on disk (``Flash.open_file``)
------------------------------------

The image file is exactly ``sector_size * sector_count`` bytes, byte ``i`` of
the file being byte ``i`` of the flash, with no header.  A missing file is
created blank (all ``0xFF``, written to a temporary name, fsync'ed and
renamed, so a half-created image never exists).  Every program and erase is
written through with ``pwrite`` and ``fsync`` before the call returns: once
``program`` or ``erase`` has returned, a killed process loses nothing of it.
An existing file of any other size is refused with :class:`FlashError`.

Power cuts (test hook)
----------------------

``cut_power_at(k)`` makes the ``k``-th program or erase from now (counting
from 1) *torn*, and then raises :class:`PowerLoss`; every operation after it
(reads too) raises :class:`PowerLoss` until ``power_on()``, the simulated
reboot.  The image keeps its torn contents.  What a torn operation leaves is
NOR-consistent and deterministic from the flash's ``seed`` and the number of
the operation (or fixed by ``keep``):

* a torn program fully programs the first ``n`` bytes (``0 <= n <= len``),
  clears a subset of the bits the next byte needed cleared, and leaves the
  rest untouched -- so a program that completed (``n == len``) but whose
  caller never saw it return is one of the cases;
* a torn erase sets a prefix or a suffix of the sector to ``0xFF`` and sets a
  subset of the bits of the byte at the boundary -- so old records may
  survive whole, cut in half, or not at all.

:class:`PowerLoss` derives from :class:`BaseException`, not
:class:`Exception`: a power cut is not an error the firmware can handle, and
an ``except Exception`` in the firmware must not swallow it.

``operations`` counts every program and erase performed (the torn one
included), so a test runs a scenario once cleanly, reads ``operations``, and
then replays it cutting power at each ``k`` in ``1 .. operations``.

>>> flash = Flash.in_memory(sector_size=16, sector_count=2)
>>> flash.program(0, b"\\x0f")
>>> flash.program(0, b"\\xf0")
Traceback (most recent call last):
...
pumpguard.firmware_sim.flash.FlashError: program at 0 needs a 0 -> 1 bit change (erase first)
>>> flash.erase(0)
>>> flash.read(0, 2)
b'\\xff\\xff'
"""

from __future__ import annotations

import hashlib
import os
import struct
import sys
from types import TracebackType
from typing import Final, NoReturn

if sys.platform != "win32":
    import fcntl

__all__ = [
    "DEFAULT_SECTOR_COUNT",
    "DEFAULT_SECTOR_SIZE",
    "ERASED",
    "Flash",
    "FlashError",
    "FlashWorn",
    "PowerLoss",
    "StorageError",
    "StorageWorn",
    "is_erased",
]

#: Value of every byte of an erased sector.
ERASED: Final = 0xFF
#: A common serial-NOR sector (4 KiB) and a 64 KiB part.
DEFAULT_SECTOR_SIZE: Final = 4096
DEFAULT_SECTOR_COUNT: Final = 16
#: Smallest sector the simulation accepts; real parts are 256 B and up.
MIN_SECTOR_SIZE: Final = 16
#: Erase cycles a sector endures (serial NOR parts are rated 100 000).
DEFAULT_ENDURANCE: Final = 100_000


class StorageError(Exception):
    """Base of the storage layer's errors (flash, snapshot store, audit log)."""


class FlashError(StorageError):
    """The flash refused an operation: out of range, 0 -> 1 program, bad image file."""


class FlashWorn(FlashError):
    """A sector has worn out: it can no longer be erased or programmed.

    ``sector`` names it, so storage above the flash can retire it and carry
    on in the others.
    """

    def __init__(self, sector: int) -> None:
        self.sector = sector
        super().__init__(f"sector {sector} is worn out (erase endurance exceeded)")


class StorageWorn(StorageError):
    """A storage region has too few sectors left that are not worn out to go on.

    Raised by the snapshot store and the audit log only when retiring worn
    sectors no longer helps.  Nothing stored so far is lost, but nothing
    more can be: the firmware must stop writing there and enter its safe
    state, basal running (firmware_sim/pump.py).
    """


class PowerLoss(BaseException):
    """The simulated power was cut; nothing more runs until ``power_on()``.

    An event rather than an error, hence a :class:`BaseException`: see the
    module docstring.
    """


def is_erased(data: bytes) -> bool:
    """Whether every byte of ``data`` reads as erased flash (``0xFF``)."""
    return data.count(ERASED) == len(data)


def _tear_bits(seed: int, operation: int) -> int:
    """64 deterministic bits for the tear of one operation."""
    digest = hashlib.sha256(struct.pack(">QQ", seed & (2**64 - 1), operation)).digest()
    return int.from_bytes(digest[:8], "big")


class Flash:
    """A NOR flash of ``sector_count`` sectors of ``sector_size`` bytes.

    Build one with :meth:`in_memory` (tests) or :meth:`open_file` (a durable
    image).  All offsets are absolute byte offsets into the device.
    """

    def __init__(
        self,
        image: bytearray,
        *,
        sector_size: int,
        sector_count: int,
        seed: int,
        fd: int | None,
        path: str | None,
        read_only: bool,
        endurance: int = DEFAULT_ENDURANCE,
    ) -> None:
        """Internal: use :meth:`in_memory` or :meth:`open_file`."""
        _check_geometry(sector_size, sector_count)
        if endurance < 1:
            raise ValueError("endurance is at least one erase cycle")
        if len(image) != sector_size * sector_count:
            raise FlashError("image size does not match the geometry")
        self._image = image
        self._sector_size = sector_size
        self._sector_count = sector_count
        self._seed = seed
        self._fd = fd
        self._path = path
        self._read_only = read_only
        self._operations = 0
        self._cut_at: int | None = None
        self._keep: float | None = None
        self._powered = True
        self._closed = False
        self._endurance = endurance
        #: Successful (or torn) erases of each sector, and the worn sectors.
        self._erases = [0] * sector_count
        self._worn: set[int] = set()

    # --- construction -------------------------------------------------------

    @classmethod
    def in_memory(
        cls,
        *,
        sector_size: int = DEFAULT_SECTOR_SIZE,
        sector_count: int = DEFAULT_SECTOR_COUNT,
        seed: int = 0,
        endurance: int = DEFAULT_ENDURANCE,
    ) -> Flash:
        """A blank flash backed by a ``bytearray`` (lost with the object)."""
        _check_geometry(sector_size, sector_count)
        image = bytearray([ERASED]) * (sector_size * sector_count)
        return cls(
            image,
            sector_size=sector_size,
            sector_count=sector_count,
            seed=seed,
            fd=None,
            path=None,
            read_only=False,
            endurance=endurance,
        )

    @classmethod
    def open_file(
        cls,
        path: str | os.PathLike[str],
        *,
        sector_size: int = DEFAULT_SECTOR_SIZE,
        sector_count: int = DEFAULT_SECTOR_COUNT,
        seed: int = 0,
        read_only: bool = False,
        endurance: int = DEFAULT_ENDURANCE,
    ) -> Flash:
        """The flash whose image is the file at ``path``.

        A missing file is created blank, unless ``read_only`` (then it is an
        error).  A writable flash holds an exclusive lock on the file, so two
        simulated pumps cannot share one image; a read-only one (for offline
        tools) takes no lock and sees the image as it was when opened.

        Raises:
            FlashError: the file's size is not ``sector_size * sector_count``,
                it is missing and ``read_only``, or another process holds it.
            OSError: the file cannot be opened or created.
        """
        _check_geometry(sector_size, sector_count)
        name = os.fspath(path)
        size = sector_size * sector_count
        if read_only:
            if not os.path.exists(name):
                raise FlashError(f"flash image {name!r} does not exist")
            fd = os.open(name, os.O_RDONLY)
        else:
            if not os.path.exists(name):
                _create_blank_image(name, size)
            fd = os.open(name, os.O_RDWR)
        try:
            if not read_only and sys.platform != "win32":
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise FlashError(f"flash image {name!r} is in use by another process") from None
            actual = os.fstat(fd).st_size
            if actual != size:
                raise FlashError(
                    f"flash image {name!r} is {actual} bytes, expected {size} "
                    f"({sector_count} sectors of {sector_size} bytes)"
                )
            image = bytearray(os.pread(fd, size, 0))
            if len(image) != size:
                raise FlashError(f"flash image {name!r} could not be read whole")
        except BaseException:
            os.close(fd)
            raise
        return cls(
            image,
            sector_size=sector_size,
            sector_count=sector_count,
            seed=seed,
            fd=fd,
            path=name,
            read_only=read_only,
            endurance=endurance,
        )

    # --- geometry -----------------------------------------------------------

    @property
    def sector_size(self) -> int:
        """Bytes per erasable sector."""
        return self._sector_size

    @property
    def sector_count(self) -> int:
        """Number of sectors."""
        return self._sector_count

    @property
    def size(self) -> int:
        """Total bytes: ``sector_size * sector_count``."""
        return len(self._image)

    @property
    def path(self) -> str | None:
        """The image file, or ``None`` for an in-memory flash."""
        return self._path

    @property
    def operations(self) -> int:
        """Programs and erases performed so far (a torn one included)."""
        return self._operations

    @property
    def endurance(self) -> int:
        """Erase cycles each sector endures."""
        return self._endurance

    def erase_count(self, sector: int) -> int:
        """Erases ``sector`` has undergone (a torn one included)."""
        return self._erases[sector]

    def is_worn(self, sector: int) -> bool:
        """Whether ``sector`` has worn out: its erases and programs fail."""
        return sector in self._worn

    @property
    def erases(self) -> int:
        """Erases of every sector together."""
        return sum(self._erases)

    @property
    def powered(self) -> bool:
        """False between a simulated power cut and :meth:`power_on`."""
        return self._powered

    # --- the three NOR operations -------------------------------------------

    def read(self, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset``.

        Raises:
            FlashError: the range is outside the device.
            PowerLoss: the power is off.
        """
        self._check_usable()
        self._check_range(offset, length)
        return bytes(self._image[offset : offset + length])

    def program(self, offset: int, data: bytes) -> None:
        """Program ``data`` at ``offset``: clear the bits that are 0 in ``data``.

        Every bit that is 0 in the flash must also be 0 in ``data``;
        otherwise nothing is written and :class:`FlashError` is raised.  The
        range may span sectors.

        Raises:
            FlashError: empty data, range outside the device, a 0 -> 1 change,
                or a read-only image.
            PowerLoss: the power is (or just went) off; the program may be torn.
        """
        self._check_usable()
        self._check_writable()
        length = len(data)
        if length == 0:
            raise FlashError("empty program")
        self._check_range(offset, length)
        old = int.from_bytes(self._image[offset : offset + length], "big")
        new = int.from_bytes(data, "big")
        if new & ~old:
            raise FlashError(f"program at {offset} needs a 0 -> 1 bit change (erase first)")
        first, last = offset // self._sector_size, (offset + length - 1) // self._sector_size
        for sector in range(first, last + 1):
            if sector in self._worn:
                raise FlashWorn(sector)
        self._operations += 1
        if self._operations == self._cut_at:
            self._torn_program(offset, bytes(data))
            self._write_through(offset, length)
            self._power_fail()
        self._image[offset : offset + length] = data
        self._write_through(offset, length)

    def erase(self, sector: int) -> None:
        """Set every byte of ``sector`` to ``0xFF``.

        Raises:
            FlashError: no such sector, or a read-only image.
            FlashWorn: the sector has had all the erases it endures; it is
                left as it was, and worn from now on.
            PowerLoss: the power is (or just went) off; the erase may be torn.
        """
        self._check_usable()
        self._check_writable()
        if not 0 <= sector < self._sector_count:
            raise FlashError(f"sector {sector} outside 0..{self._sector_count - 1}")
        if sector in self._worn or self._erases[sector] >= self._endurance:
            self._worn.add(sector)
            raise FlashWorn(sector)
        start = sector * self._sector_size
        self._erases[sector] += 1
        self._operations += 1
        if self._operations == self._cut_at:
            self._torn_erase(start)
            self._write_through(start, self._sector_size)
            self._power_fail()
        self._image[start : start + self._sector_size] = bytes([ERASED]) * self._sector_size
        self._write_through(start, self._sector_size)

    # --- fault injection (tests) ---------------------------------------------

    def cut_power_at(self, k: int, *, keep: float | None = None) -> None:
        """Tear the ``k``-th program or erase from now, then lose power.

        ``keep`` fixes how much of the torn operation happens: the fraction
        of the bytes programmed (or of the sector erased, from its start),
        with no partial byte; ``1.0`` completes the operation and then cuts
        the power before the caller learns of it.  ``None`` picks the tear
        from the seed (see the module docstring).
        """
        if k < 1:
            raise ValueError("k counts from 1")
        if keep is not None and not 0.0 <= keep <= 1.0:
            raise ValueError("keep is a fraction in [0, 1]")
        self._cut_at = self._operations + k
        self._keep = keep

    def power_on(self) -> None:
        """Restore power (the simulated reboot) and disarm any pending cut.

        The contents stay as the power cut left them.  Whoever used the
        flash before must be rebuilt from it, as firmware is after a reset.
        """
        self._powered = True
        self._cut_at = None
        self._keep = None

    def age(self, sector: int, erases: int) -> None:
        """Count ``erases`` more erase cycles on ``sector`` without erasing it.

        A test hook for wear: a sector aged to its endurance fails its next
        erase.  Not counted in :attr:`operations`.
        """
        if not 0 <= sector < self._sector_count or erases < 0:
            raise ValueError("no such sector, or a negative count")
        self._erases[sector] += erases

    def tamper(self, offset: int, data: bytes) -> None:
        """Overwrite bytes with no NOR rules: bit rot or a flash programmer.

        A test hook; not counted in :attr:`operations` and allowed with the
        power off.  Written through to an image file like any write.
        """
        self._check_writable()
        self._check_range(offset, len(data))
        self._image[offset : offset + len(data)] = data
        self._write_through(offset, len(data))

    # --- lifetime -----------------------------------------------------------

    def close(self) -> None:
        """Release the image file.  Further operations raise :class:`FlashError`."""
        self._closed = True
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def __enter__(self) -> Flash:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        where = self._path if self._path is not None else "memory"
        return (
            f"Flash({self._sector_count} x {self._sector_size} B, {where}, "
            f"operations={self._operations})"
        )

    # --- internals ----------------------------------------------------------

    def _check_usable(self) -> None:
        if self._closed:
            raise FlashError("flash is closed")
        if not self._powered:
            raise PowerLoss("the flash has no power")

    def _check_writable(self) -> None:
        if self._closed:
            raise FlashError("flash is closed")
        if self._read_only:
            raise FlashError("flash image is open read-only")

    def _check_range(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > len(self._image):
            raise FlashError(f"range {offset}+{length} outside the {len(self._image)}-byte flash")

    def _power_fail(self) -> NoReturn:
        self._powered = False
        self._cut_at = None
        raise PowerLoss(f"power cut during flash operation {self._operations}")

    def _torn_program(self, offset: int, data: bytes) -> None:
        length = len(data)
        if self._keep is not None:
            done, mask = round(self._keep * length), 0
        else:
            bits = _tear_bits(self._seed, self._operations)
            done, mask = bits % (length + 1), (bits >> 32) & 0xFF
        self._image[offset : offset + done] = data[:done]
        if done < length:
            # Of the bits this byte needed cleared, only those in ``mask`` were.
            old = self._image[offset + done]
            to_clear = old & ~data[done] & 0xFF
            self._image[offset + done] = old & ~(to_clear & mask) & 0xFF

    def _torn_erase(self, start: int) -> None:
        size = self._sector_size
        if self._keep is not None:
            done, from_end, mask = round(self._keep * size), False, 0
        else:
            bits = _tear_bits(self._seed, self._operations)
            done, from_end, mask = bits % (size + 1), bool(bits >> 63), (bits >> 32) & 0xFF
        if from_end:
            self._image[start + size - done : start + size] = bytes([ERASED]) * done
            boundary = start + size - done - 1
        else:
            self._image[start : start + done] = bytes([ERASED]) * done
            boundary = start + done
        if done < size:
            self._image[boundary] |= mask

    def _write_through(self, offset: int, length: int) -> None:
        if self._fd is None:
            return
        os.pwrite(self._fd, bytes(self._image[offset : offset + length]), offset)
        os.fsync(self._fd)


def _check_geometry(sector_size: int, sector_count: int) -> None:
    if sector_size < MIN_SECTOR_SIZE or sector_count < 1:
        raise ValueError(
            f"need sector_size >= {MIN_SECTOR_SIZE} and sector_count >= 1, "
            f"got {sector_size} x {sector_count}"
        )


def _create_blank_image(name: str, size: int) -> None:
    """Create a blank image atomically: write a temporary file, fsync, rename."""
    directory = os.path.dirname(os.path.abspath(name))
    temporary = f"{name}.tmp-{os.getpid()}"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as image:
        image.write(bytes([ERASED]) * size)
        image.flush()
        os.fsync(image.fileno())
    os.replace(temporary, name)
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
