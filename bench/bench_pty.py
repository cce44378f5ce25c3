"""A status round trip between two processes over a pty pair, against a bare echo.

``pumpsim`` (the CLI of the BRIEF's contract, started with this
interpreter) runs in a subprocess on one end of a virtual null-modem cable
(:func:`host.transport.create_vnull`); this process pairs with it through
:class:`host.client.RemoteClient` (``--auto-confirm`` plays the user at the
pump, SPEC §9), and then times ``client.status()``: seal and frame a
StatusRequest, the relay, the pump's UART driver and main loop, its
firmware (unframe, open, build the Status, seal), the relay back, and the
client reading, unframing, opening and decoding it (SPEC §3, §7, §12).

The floor is the same traffic with nothing behind it: a subprocess on
another vnull pair that reads as many bytes as the framed request and
writes as many as the framed response (bench/echo_server.py), timed the
same way from this process with :class:`host.transport.SerialLink` (the
link the client uses).  ``echo`` does the far end with ``os.read`` /
``os.write`` (the physical floor); ``echo-uart`` with the pump's own UART
driver in pumpsim's loop pattern (what the driver costs).  Target
(bench/report.py): ``pumpsim-status`` at most 2x ``echo``.

Setting up costs about 2 s (interpreter start-up, and pairing: the pump
opens pairing mode only after the remote's first request, which the remote
repeats after 1 s); all three benchmarks share it.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from bench.report import ROOT
from pumpguard.host.client import RemoteClient
from pumpguard.host.journal import Journal
from pumpguard.host.keystore import KeyStore
from pumpguard.host.transport import RecordChannel, SerialLink, create_vnull
from pumpguard.protocol import Status

#: ``pumpsim`` as its console script runs it, with this interpreter.
PUMPSIM = "import sys; from firmware_sim.cli import main; sys.exit(main())"
START_TIMEOUT_S = 20.0


class CountingLink:
    """A :class:`SerialLink` that counts the bytes each way."""

    def __init__(self, link: SerialLink) -> None:
        self._link = link
        self.written = 0
        self.read_bytes = 0

    def write(self, data: bytes) -> None:
        self._link.write(data)
        self.written += len(data)

    def read(self, timeout: float) -> bytes:
        data = self._link.read(timeout)
        self.read_bytes += len(data)
        return data

    def close(self) -> None:
        self._link.close()


@dataclass
class PtyPump:
    client: RemoteClient
    link: CountingLink
    process: subprocess.Popen[bytes]
    #: Framed bytes of one status exchange, each way.
    request_bytes: int
    response_bytes: int


def _wait_for_line(process: subprocess.Popen[bytes], log: Path, marker: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while marker not in log.read_text(encoding="utf-8", errors="replace"):
        if process.poll() is not None:
            pytest.fail(f"{process.args!r} exited: {log.read_text(errors='replace')}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {marker!r} from {process.args!r} in {START_TIMEOUT_S} s")
        time.sleep(0.01)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


@pytest.fixture(scope="module")
def pty_pump(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PtyPump]:
    tmp = tmp_path_factory.mktemp("pty")
    log_path = tmp / "pumpsim.log"
    remote_port, pump_port, modem = create_vnull()
    log: IO[bytes] = log_path.open("wb")
    process = subprocess.Popen(  # noqa: S603 (our interpreter and our CLI)
        [
            sys.executable,
            "-c",
            PUMPSIM,
            "--port",
            pump_port,
            "--state",
            str(tmp / "state"),
            "--auto-confirm",
        ],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    link = CountingLink(SerialLink.open(remote_port))
    try:
        _wait_for_line(process, log_path, "[pump] running")
        keys = tmp / "keys"
        client = RemoteClient(RecordChannel(link), KeyStore.open(keys), Journal.open(keys))
        client.pair(lambda code: True)
        client.status()  # the handshake, and the audit key pinned: not timed
        written, read = link.written, link.read_bytes
        client.status()
        yield PtyPump(client, link, process, link.written - written, link.read_bytes - read)
    finally:
        link.close()
        _stop(process)
        modem.close()
        log.close()


def _echo_server(
    modem_port: str, request: int, response: int, *, uart: bool, log: Path
) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "bench.echo_server", modem_port, str(request), str(response)]
    with log.open("wb") as out:
        process = subprocess.Popen(  # noqa: S603 (our interpreter and our module)
            [*command, *(["--uart"] if uart else [])],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    _wait_for_line(process, log, "ready")
    return process


@pytest.mark.parametrize("kind", ["echo", "echo-uart", "pumpsim-status"])
def test_pty_round_trip(
    benchmark: BenchmarkFixture, pty_pump: PtyPump, tmp_path: Path, kind: str
) -> None:
    benchmark.group = "status round trip over a pty pair, two processes"
    request, response = pty_pump.request_bytes, pty_pump.response_bytes
    benchmark.extra_info["wire_bytes"] = f"{request} B request + {response} B response, framed"
    if kind == "pumpsim-status":
        client = pty_pump.client
        status = benchmark(client.status)
        assert isinstance(status, Status)
        assert status.remote_bolus_enabled is False  # as pumpsim started: no --remote-bolus
        assert pty_pump.process.poll() is None
        return
    near, far, modem = create_vnull()
    process: subprocess.Popen[bytes] | None = None
    link: SerialLink | None = None
    try:
        process = _echo_server(
            far, request, response, uart=kind == "echo-uart", log=tmp_path / "echo.log"
        )
        link = SerialLink.open(near)
        port = link
        payload = bytes(request - 1) + b"\x00"

        def round_trip() -> int:
            port.write(payload)
            got = 0
            while got < response:
                got += len(port.read(1.0))
            return got

        assert benchmark(round_trip) == response
    finally:
        if link is not None:
            link.close()
        if process is not None:
            _stop(process)
        modem.close()
