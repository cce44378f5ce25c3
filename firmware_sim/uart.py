"""The pump's UART driver: its own small binding to a serial port.

Like a firmware UART driver, it knows nothing of the remote's code
(``firmware_sim`` never imports ``host``).  It opens any pyserial URL
(``loop://``, ``socket://``, ``rfc2217://``) or a device / pty path.
"""

from __future__ import annotations

import serial

BAUDRATE = 115200


class UartError(Exception):
    """The port could not be opened or vanished; one line for the operator."""


class Uart:
    def __init__(self, port: str, baudrate: int = BAUDRATE) -> None:
        try:
            self._serial = serial.serial_for_url(
                port, baudrate=baudrate, timeout=0, write_timeout=2.0, exclusive=True
            )
        except TypeError:  # URL handlers without the 'exclusive' option
            self._serial = serial.serial_for_url(
                port, baudrate=baudrate, timeout=0, write_timeout=2.0
            )
        except (serial.SerialException, ValueError, OSError) as exc:
            raise UartError(f"cannot open port {port}: {exc}") from None
        self.port = port
        self._timeout = 0.0

    def read(self, timeout: float) -> bytes:
        """Whatever arrived within ``timeout`` seconds (possibly nothing)."""
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
            raise UartError(f"port {self.port} failed: {exc}") from None

    def write(self, data: bytes) -> None:
        try:
            # write_timeout bounds a stuck port; no drain per write.
            self._serial.write(data)
        except (serial.SerialException, OSError) as exc:
            raise UartError(f"port {self.port} failed: {exc}") from None

    def close(self) -> None:
        self._serial.close()
