"""The physical floor of a round trip over a pty pair: read N bytes, write M back.

Usage (bench_pty.py starts it)::

    python -m bench.echo_server PORT REQUEST_BYTES RESPONSE_BYTES [--uart]

It opens ``PORT`` (one end of a virtual null-modem cable), prints ``ready``
and then, until the port goes away or it is terminated, reads exactly
``REQUEST_BYTES`` and answers with ``RESPONSE_BYTES`` (zeros, the last one
a frame delimiter), over and over.  Nothing else: no framing, no crypto, no
state -- the least any program on the far end of that cable can do, so
``pumpsim``'s round trip can be measured against it.

Bare (default): ``os.read`` / ``os.write`` on the raw pty.  With ``--uart``
the pump's own serial driver (:class:`firmware_sim.uart.Uart`, pyserial
underneath) is used the way ``pumpsim``'s main loop uses it -- a read with
the loop's 20 ms timeout, a write and a flush -- so the difference between
the two is what the driver costs, and the difference between ``--uart``
and ``pumpsim`` is what the firmware costs.
"""

from __future__ import annotations

import argparse
import os
import sys
import tty
from collections.abc import Callable

from pumpguard.firmware_sim.runner import TICK_INTERVAL_S
from pumpguard.firmware_sim.uart import Uart, UartError


def _serve(
    read: Callable[[], bytes], write: Callable[[bytes], None], request: int, response: bytes
) -> None:
    pending = 0
    while True:
        pending += len(read())
        while pending >= request:
            pending -= request
            write(response)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("port")
    parser.add_argument("request", type=int)
    parser.add_argument("response", type=int)
    parser.add_argument("--uart", action="store_true", help="use the pump's UART driver")
    args = parser.parse_args(argv)
    response = bytes(args.response - 1) + b"\x00"
    if args.uart:
        uart = Uart(args.port)

        def read() -> bytes:
            return uart.read(TICK_INTERVAL_S)

        write = uart.write
    else:
        fd = os.open(args.port, os.O_RDWR | os.O_NOCTTY)
        tty.setraw(fd)

        def read() -> bytes:
            data = os.read(fd, 4096)
            if not data:
                raise EOFError("the port went away")
            return data

        def write(data: bytes) -> None:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]

    print("ready", flush=True)
    try:
        _serve(read, write, args.request, response)
    except (EOFError, OSError, UartError, KeyboardInterrupt):
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
