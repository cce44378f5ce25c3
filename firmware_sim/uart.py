"""The pump's UART driver: its own small binding to a serial port.

Like a firmware UART driver, it knows nothing of the remote's code
(``firmware_sim`` never imports ``host``).  It opens any pyserial URL
(``loop://``, ``socket://``, ``rfc2217://``) or a device / pty path.

It reports what went wrong as one of two link events, never deciding what
to do about them: :class:`PortLost` (the device hung up, vanished or
failed) and :class:`WriteTimeout` (the peer stopped taking bytes).  Keeping
the therapy loop running through them is the job of
:class:`firmware_sim.runner.LinkSupervisor` (SPEC §3.1).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from typing import Any

import serial

BAUDRATE = 115200
#: How long a blocking :meth:`Uart.write` may wait for the port to take bytes.
WRITE_TIMEOUT_S = 2.0


class UartError(Exception):
    """The port could not be opened or vanished; one line for the operator."""


class PortLost(UartError):
    """The port hung up, vanished or failed: it must be closed and reopened."""


class WriteTimeout(UartError):
    """The port took no bytes for :data:`WRITE_TIMEOUT_S`: the peer is not reading."""


#: How a port is opened: :func:`serial.serial_for_url`, or a fake in tests.
PortOpener = Callable[..., Any]


class Uart:
    """One open serial port.

    Raises:
        UartError: the port cannot be opened (from the constructor).
    """

    def __init__(
        self,
        port: str,
        baudrate: int = BAUDRATE,
        *,
        open_port: PortOpener = serial.serial_for_url,
    ) -> None:
        options: dict[str, Any] = {
            "baudrate": baudrate,
            "timeout": 0,
            "write_timeout": WRITE_TIMEOUT_S,
        }
        try:
            try:
                self._serial = open_port(port, exclusive=True, **options)
            except TypeError:  # URL handlers without the 'exclusive' option
                self._serial = open_port(port, **options)
        except (serial.SerialException, ValueError, OSError) as exc:
            raise UartError(f"cannot open port {port}: {exc}") from None
        self.port = port
        self._timeout = 0.0
        # A device or pty opened by pyserial (non-blocking, as pyserial
        # leaves it) can be offered bytes without waiting; URL handlers
        # cannot, and fall back to pyserial's write bounded by its timeout.
        self._fd: int | None = None
        if os.name == "posix" and isinstance(self._serial, serial.Serial):
            self._fd = self._serial.fileno()
            os.set_blocking(self._fd, False)

    def _lost(self, exc: BaseException) -> PortLost:
        return PortLost(f"port {self.port} failed: {exc}")

    def read(self, timeout: float) -> bytes:
        """Whatever arrived within ``timeout`` seconds (possibly nothing).

        Raises:
            PortLost: the port hung up or failed.
        """
        try:
            # Setting a pyserial timeout reconfigures the port: only on change
            # (the firmware loop always asks for the same tick interval).
            if timeout != self._timeout:
                self._serial.timeout = timeout
                self._timeout = timeout
            first: bytes = self._serial.read(1)
            if not first:
                return b""
            waiting = self._serial.in_waiting
            rest: bytes = self._serial.read(waiting) if waiting else b""
            return first + rest
        except (serial.SerialException, OSError) as exc:
            raise self._lost(exc) from None

    def write(self, data: bytes) -> None:
        """Write all of ``data``, waiting at most :data:`WRITE_TIMEOUT_S` for the port.

        Raises:
            WriteTimeout: the port took nothing for that long (part may be sent).
            PortLost: the port hung up or failed.
        """
        try:
            # write_timeout bounds a stuck port; no drain per write.
            self._serial.write(data)
        except serial.SerialTimeoutException as exc:
            raise WriteTimeout(f"port {self.port}: {exc}") from None
        except (serial.SerialException, OSError) as exc:
            raise self._lost(exc) from None

    def write_nowait(self, data: bytes) -> int:
        """Offer ``data`` to the port; return how many leading bytes it took.

        On a device or pty this never waits: 0 means the port's buffer is
        full.  A pyserial URL handler has no such mode; its write waits at
        most :data:`WRITE_TIMEOUT_S`.

        Raises:
            WriteTimeout: a URL handler's write timed out (part may be sent).
            PortLost: the port hung up or failed.
        """
        if not data:
            return 0
        try:
            if self._fd is not None:
                try:
                    return os.write(self._fd, data)
                except BlockingIOError:
                    return 0
            written = self._serial.write(data)
        except serial.SerialTimeoutException as exc:
            raise WriteTimeout(f"port {self.port}: {exc}") from None
        except (serial.SerialException, OSError) as exc:
            raise self._lost(exc) from None
        return len(data) if written is None else int(written)

    def close(self) -> None:
        """Release the port.  Never raises: a port that hung up may fail to close."""
        with contextlib.suppress(serial.SerialException, OSError):
            self._serial.close()
