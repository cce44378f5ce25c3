"""Byte links between the remote and the pump, and the record channel above them.

The protocol core is sans-I/O (SPEC §3): it turns records into frame bytes
and back, and never touches a port.  This module is the I/O it leaves out,
kept small so the same remote code runs over every link a tester uses:

* :class:`SerialLink` -- a real UART, a pty path, or any pyserial URL
  (``loop://``, ``socket://``, ``rfc2217://``, ``spy://``).
* :class:`MemoryLink` -- an in-memory, thread-safe, full-duplex loopback for
  tests and ``pumpctl demo``, with a per-direction fault hook so attack tests
  can drop, duplicate, reorder or corrupt what crosses it.
* :func:`create_vnull` -- a virtual null-modem cable: two ptys whose masters
  are relayed, so two programs can each open a serial "port" and talk.
* :class:`RecordChannel` -- a link plus :class:`protocol.FrameDecoder`: whole
  records in and out, damaged frames dropped and reported, never raised.

Every link raises exactly one exception type, :class:`LinkError`, with one
line a user can act on ("port /dev/ttyUSB0 vanished: ...").  pyserial's own
exception types never escape, so callers (the CLI maps a link error to exit
status 2) need no knowledge of pyserial.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import select
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Final, Protocol

import serial

from pumpguard.protocol import FrameDecoder, FramingError, encode_frame

__all__ = [
    "RECEIVE",
    "SEND",
    "Closer",
    "FrameCallback",
    "Link",
    "LinkError",
    "MemoryLink",
    "RecordChannel",
    "SerialLink",
    "TransferHook",
    "VirtualNullModem",
    "create_vnull",
]

#: Directions reported to a :data:`FrameCallback`.
SEND: Final = "send"
RECEIVE: Final = "receive"

#: Verdict reported for every record sent, and for every record received intact.
VERDICT_SENT: Final = "sent"
VERDICT_RECEIVED: Final = "received"

#: ``on_frame(direction, record_or_none, verdict)``; ``record`` is ``None``
#: for a frame that was dropped as damaged.
FrameCallback = Callable[[str, bytes | None, str], None]

#: A fault hook: the bytes of one ``write`` in, the chunks to deliver out
#: (``[]`` drops them, ``[data, data]`` duplicates them, and so on).
TransferHook = Callable[[bytes], list[bytes]]

#: Default write timeout of a serial port: at 115200 baud a maximal frame
#: takes 23 ms, so a write blocked for seconds means the port is stuck.
DEFAULT_WRITE_TIMEOUT_S: Final = 2.0

#: Most bytes a :class:`MemoryLink` direction buffers unread, like a UART's
#: receive buffer; bytes beyond it are lost (and counted) rather than letting
#: a flood grow memory without bound (S9).
MEMORY_LINK_BUFFER: Final = 1 << 20

#: Most bytes the vnull relay holds for one direction before it stops
#: reading from the sender (back-pressure, as hardware flow control would).
_VNULL_PENDING: Final = 1 << 16
_VNULL_CHUNK: Final = 4096


class LinkError(Exception):
    """The link is unusable: a port could not be opened, vanished, or was closed.

    The message is one line for the user; it never names a pyserial type.
    """


class Link(Protocol):
    """A full-duplex byte stream.  Bytes written at one end come out of the other."""

    def write(self, data: bytes) -> None:
        """Send ``data`` in full.

        Raises:
            LinkError: the link is closed or broken, or the write timed out.
        """
        ...

    def read(self, timeout: float) -> bytes:
        """Return the bytes available now, waiting up to ``timeout`` seconds for the first.

        The result may hold part of a frame, or several frames; ``b""`` means
        nothing arrived before the timeout.

        Raises:
            LinkError: the link is closed or broken.
        """
        ...

    def close(self) -> None:
        """Release the link.  Idempotent.  A blocked :meth:`read` is woken."""
        ...


# --- Serial ports -----------------------------------------------------------


def _serial_errors() -> tuple[type[BaseException], ...]:
    """Everything pyserial lets escape: its own type, OS errors, bad settings,
    and on POSIX ``termios.error`` (which is not an ``OSError``)."""
    errors: tuple[type[BaseException], ...] = (serial.SerialException, OSError, ValueError)
    try:
        import termios
    except ImportError:  # Windows: pyserial's win32 backend raises only the above.
        return errors
    return (*errors, termios.error)


_SERIAL_ERRORS: Final = _serial_errors()
#: Longest single wait of :meth:`SerialLink.read`.
_POLL_S: Final = 0.05


_ERRNO_REASONS: Final = {
    errno.ENOENT: "no such device",
    errno.EACCES: "permission denied",
    errno.EBUSY: "device busy",
    errno.EAGAIN: "in use by another program",
    errno.ENXIO: "no such device",
    errno.ENOTTY: "not a serial port",
    errno.EIO: "input/output error",
}


_ERRNO_IN_TEXT: Final = re.compile(r"\[Errno (\d+)\]|\((\d+), '")


def _reason(exc: BaseException) -> str:
    """One short line for an exception, without its type name.

    pyserial nests the OS error inside its own text ("could not open port X:
    [Errno 2] ...: 'X'", "Could not configure port: (5, '...')"), so the
    innermost errno is turned back into plain words.
    """
    code = getattr(exc, "errno", None)
    if not isinstance(code, int):
        found = _ERRNO_IN_TEXT.findall(str(exc))
        code = int("".join(found[-1])) if found else None
    if code is not None:
        return _ERRNO_REASONS.get(code) or os.strerror(code)
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


class SerialLink:
    """A serial port, pty or pyserial URL as a :class:`Link`.

    Build one with :meth:`open`.  Reads wait for the first byte up to the
    timeout and then take whatever else the driver already holds
    (``in_waiting``), so a read returns as soon as anything arrives instead
    of waiting to fill a fixed size.
    """

    def __init__(self, port: Any, name: str) -> None:
        # ``port`` is an open pyserial object; pyserial ships no type hints.
        self._port = port
        self._name = name
        self._timeout: float | None = None
        self._closed = False

    @classmethod
    def open(
        cls,
        port: str,
        baudrate: int = 115200,
        *,
        write_timeout: float = DEFAULT_WRITE_TIMEOUT_S,
    ) -> SerialLink:
        """Open a device path, pty path or pyserial URL (8N1, no flow control).

        Exclusive access is requested where the platform supports it (an
        advisory ``flock`` on POSIX devices), so a second program opening the
        same port fails instead of stealing half the bytes.

        Raises:
            LinkError: the port does not exist, is busy, or is not a port.
        """
        try:
            handle = serial.serial_for_url(
                port,
                baudrate=baudrate,
                timeout=0,
                write_timeout=write_timeout,
                exclusive=True,
            )
        except _SERIAL_ERRORS as exc:
            raise LinkError(f"cannot open port {port}: {_reason(exc)}") from None
        return cls(handle, port)

    @property
    def name(self) -> str:
        """The path or URL the port was opened with."""
        return self._name

    def _broken(self, what: str, exc: BaseException) -> LinkError:
        return LinkError(f"port {self._name} vanished ({what} failed: {_reason(exc)})")

    def _check_open(self) -> None:
        if self._closed:
            raise LinkError(f"port {self._name} is closed")

    def write(self, data: bytes) -> None:
        self._check_open()
        try:
            self._port.write(data)
        except serial.SerialTimeoutException:
            raise LinkError(
                f"port {self._name} accepted no data for {self._port.write_timeout} s "
                "(is the other side reading?)"
            ) from None
        except _SERIAL_ERRORS as exc:
            raise self._broken("write", exc) from None

    def read(self, timeout: float) -> bytes:
        self._check_open()
        # Wait in slices of at most _POLL_S: callers pass the time left to a
        # deadline, a new value every call, and setting a pyserial timeout
        # reconfigures the port.  With slices the value rarely changes; a
        # caller wanting longer simply reads again.
        timeout = min(max(0.0, timeout), _POLL_S)
        try:
            # Only reconfigure the port when the value changes.
            if timeout != self._timeout:
                self._port.timeout = timeout
                self._timeout = timeout
            first: bytes = self._port.read(1)
            if not first:
                return b""
            waiting: int = self._port.in_waiting
            rest: bytes = self._port.read(waiting) if waiting else b""
        except _SERIAL_ERRORS as exc:
            raise self._broken("read", exc) from None
        return first + rest

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # Closing runs in cleanup paths, often right after a read or write
        # already reported the port vanished; raising here would replace that
        # report with a less useful one.  The handle is released either way.
        with contextlib.suppress(*_SERIAL_ERRORS):
            self._port.close()

    def __enter__(self) -> SerialLink:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"SerialLink({self._name!r}, {state})"


# --- In-memory loopback -----------------------------------------------------


class _Pipe:
    """One direction of a :class:`MemoryLink`: a bounded byte buffer."""

    __slots__ = ("buffer", "bytes_lost", "closed", "condition")

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.condition = threading.Condition()
        #: Set when the reading end is closed; wakes a blocked reader.
        self.closed = False
        #: Bytes dropped because the buffer was full (a UART overrun).
        self.bytes_lost = 0


class MemoryLink:
    """One end of an in-memory, full-duplex loopback.  Build a pair with :meth:`pair`.

    Like a serial cable, bytes written while nobody reads wait in the peer's
    buffer (up to :data:`MEMORY_LINK_BUFFER`), and a closed peer simply stops
    reading: writes towards it are discarded silently.  Closing an end wakes a
    :meth:`read` blocked on it in another thread, which then raises
    :class:`LinkError` -- the way to stop a reader thread.

    ``on_transfer``, if set, sees every :meth:`write` from this end and
    returns what the peer receives instead (attack and fault tests).

    >>> remote, pump = MemoryLink.pair()
    >>> remote.write(b"bolus")
    >>> pump.read(timeout=1.0)
    b'bolus'
    >>> pump.read(timeout=0.0)
    b''
    """

    def __init__(self, incoming: _Pipe, outgoing: _Pipe, on_transfer: TransferHook | None) -> None:
        self._incoming = incoming
        self._outgoing = outgoing
        #: Fault hook for bytes written by this end (this end -> peer).
        self.on_transfer = on_transfer

    @classmethod
    def pair(
        cls,
        *,
        a_to_b: TransferHook | None = None,
        b_to_a: TransferHook | None = None,
    ) -> tuple[MemoryLink, MemoryLink]:
        """Two connected ends ``(a, b)``; ``a_to_b`` and ``b_to_a`` are fault hooks."""
        forward, backward = _Pipe(), _Pipe()
        return cls(backward, forward, a_to_b), cls(forward, backward, b_to_a)

    @property
    def bytes_lost(self) -> int:
        """Bytes towards this end dropped because its buffer was full."""
        return self._incoming.bytes_lost

    def write(self, data: bytes) -> None:
        if self._incoming.closed:
            raise LinkError("memory link is closed")
        hook = self.on_transfer
        # The hook runs outside the lock: it may be slow or record things.
        chunks = hook(bytes(data)) if hook is not None else [bytes(data)]
        pipe = self._outgoing
        with pipe.condition:
            if pipe.closed:
                return  # The peer hung up; a cable with nobody listening.
            for chunk in chunks:
                room = MEMORY_LINK_BUFFER - len(pipe.buffer)
                pipe.buffer += chunk[:room]
                pipe.bytes_lost += max(0, len(chunk) - room)
            pipe.condition.notify_all()

    def read(self, timeout: float) -> bytes:
        pipe = self._incoming
        with pipe.condition:
            pipe.condition.wait_for(lambda: pipe.buffer or pipe.closed, max(0.0, timeout))
            if pipe.closed:
                raise LinkError("memory link is closed")
            data = bytes(pipe.buffer)
            pipe.buffer.clear()
        return data

    def close(self) -> None:
        pipe = self._incoming
        with pipe.condition:
            pipe.closed = True
            pipe.buffer.clear()
            pipe.condition.notify_all()

    def __enter__(self) -> MemoryLink:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._incoming.closed else "open"
        return f"MemoryLink({state}, {len(self._incoming.buffer)} bytes unread)"


# --- Records over a link ----------------------------------------------------


class RecordChannel:
    """Whole records over a :class:`Link`, framed per SPEC §3.

    Damaged frames (bad COBS, bad CRC, oversized) are dropped: the decoder
    resynchronises at the next delimiter and the drop is reported to
    ``on_frame`` with the record ``None`` and the reason as verdict, for
    ``-v`` logging.  A :class:`protocol.FramingError` never reaches the
    caller; the peer learns nothing either way (SPEC §10.2).

    ``on_frame`` receives records (ciphertext after pairing); what it prints
    is its business, and ``-v`` must print only type, length and counter.

    A channel belongs to one thread; the link under it may be shared only
    if the link itself is thread-safe (:class:`MemoryLink` is).
    """

    def __init__(
        self,
        link: Link,
        *,
        on_frame: FrameCallback | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._link = link
        self._decoder = FrameDecoder()
        self._on_frame = on_frame
        # Injected so a simulated link can run on simulated time.
        self._clock = clock

    @property
    def link(self) -> Link:
        return self._link

    @property
    def frames_dropped(self) -> int:
        """Damaged frames received and dropped so far."""
        return self._decoder.frames_dropped

    def send(self, record: bytes) -> None:
        """Frame ``record`` and write it.

        Raises:
            LinkError: the link failed.
            protocol.LocalProtocolError: ``record`` is empty or too long (a bug).
        """
        frame = encode_frame(record)
        self._link.write(frame)
        if self._on_frame is not None:
            self._on_frame(SEND, record, VERDICT_SENT)

    def _next_record(self) -> bytes | None:
        while True:
            try:
                record = self._decoder.next_record()
            except FramingError as exc:
                if self._on_frame is not None:
                    self._on_frame(RECEIVE, None, f"dropped: {exc}")
                continue
            if record is not None and self._on_frame is not None:
                self._on_frame(RECEIVE, record, VERDICT_RECEIVED)
            return record

    def receive(self, timeout: float) -> bytes | None:
        """Return the next intact record, or ``None`` if none arrived within ``timeout``.

        Records already buffered are returned without reading.  A link that
        keeps delivering garbage cannot hold the caller past ``timeout``.

        Raises:
            LinkError: the link failed or was closed.
        """
        deadline = self._clock() + max(0.0, timeout)
        have_read = False
        while True:
            record = self._next_record()
            if record is not None:
                return record
            now = self._clock()
            if have_read and now >= deadline:
                return None
            data = self._link.read(max(0.0, deadline - now))
            have_read = True
            if data:
                self._decoder.receive_data(data)

    def close(self) -> None:
        self._link.close()


# --- Virtual null-modem cable -----------------------------------------------


class Closer(Protocol):
    """Anything that stops a running resource."""

    def close(self) -> None: ...


class VirtualNullModem:
    """Two ptys whose masters are relayed: a null-modem cable in software.

    Each end is a pty slave path that any program, pyserial included, opens
    like a serial device; bytes written to one come out of the other
    unchanged (both ptys are raw).  The relay holds each slave open itself so
    the masters never see a hang-up while no program has an end open, and it
    applies back-pressure rather than dropping bytes when a reader is slow.

    Build one with :func:`create_vnull`.
    """

    def __init__(self) -> None:
        import tty

        self._fds: list[int] = []
        try:
            master_a, slave_a = os.openpty()
            self._fds += [master_a, slave_a]
            master_b, slave_b = os.openpty()
            self._fds += [master_b, slave_b]
            for fd in (slave_a, slave_b):
                tty.setraw(fd)
            for fd in (master_a, master_b):
                os.set_blocking(fd, False)
            self.path_a = os.ttyname(slave_a)
            self.path_b = os.ttyname(slave_b)
            wake_r, wake_w = os.pipe()
            self._fds += [wake_r, wake_w]
        except OSError as exc:
            self._close_fds()
            raise LinkError(f"cannot create a pty pair: {_reason(exc)}") from None
        self._masters = (master_a, master_b)
        self._wake_r, self._wake_w = wake_r, wake_w
        self._closed = False
        #: Why the relay stopped on its own, if it did.
        self.failure: str | None = None
        self._thread = threading.Thread(target=self._relay, name="vnull-relay", daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        """True while the relay copies bytes."""
        return self._thread.is_alive()

    def _relay(self) -> None:
        master_a, master_b = self._masters
        peer = {master_a: master_b, master_b: master_a}
        # Bytes waiting to be written into each master.
        pending = {master_a: bytearray(), master_b: bytearray()}
        try:
            while True:
                readable = [self._wake_r] + [
                    fd for fd in self._masters if len(pending[peer[fd]]) < _VNULL_PENDING
                ]
                writable = [fd for fd in self._masters if pending[fd]]
                ready_r, ready_w, _ = select.select(readable, writable, [])
                if self._wake_r in ready_r:
                    return
                for fd in ready_r:
                    try:
                        data = os.read(fd, _VNULL_CHUNK)
                    except BlockingIOError:
                        continue
                    pending[peer[fd]] += data
                for fd in ready_w:
                    try:
                        written = os.write(fd, pending[fd])
                    except BlockingIOError:
                        continue
                    del pending[fd][:written]
        except OSError as exc:
            self.failure = f"virtual null-modem relay stopped: {_reason(exc)}"

    def _close_fds(self) -> None:
        for fd in self._fds:
            # A pty whose other side vanished may fail to close; the
            # descriptor is released by the kernel regardless.
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds = []

    def close(self) -> None:
        """Stop the relay and close both ptys.  Idempotent.

        Programs still holding an end see the port vanish (EIO).
        """
        if self._closed:
            return
        self._closed = True
        os.write(self._wake_w, b"x")
        self._thread.join()
        self._close_fds()

    def __enter__(self) -> VirtualNullModem:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def create_vnull() -> tuple[str, str, VirtualNullModem]:
    """Create a virtual null-modem cable; return both port paths and its closer.

    The relay runs in a daemon thread until ``closer.close()``.  POSIX only.

    Raises:
        LinkError: the platform has no ptys, or none could be allocated.
    """
    if not hasattr(os, "openpty"):
        raise LinkError("virtual null-modem cables need ptys, which this platform lacks")
    modem = VirtualNullModem()
    return modem.path_a, modem.path_b, modem
