"""``pumpsim``: run the simulated pump on a serial port, or read its state offline.

    pumpsim --port PORT --state DIR [--auto-confirm] [--remote-bolus]
            [--prescriber-key FILE] [--time-scale X] [-v]
    pumpsim status --state DIR [--json]
    pumpsim log --state DIR [--json]

The terminal is the pump's front panel: what the pump shows is printed, and
the flags stand in for a person at the pump, each announcing loudly what it
simulates.  Exit status: 0 success, 2 usage, port or state-directory error,
1 a log that does not verify.

Once running, the pump stops only on SIGTERM or SIGINT.  Losing the port
afterwards (a hang-up, a vanished device, a peer that stops reading) is a
link event, not the end of therapy (SPEC §3.1): the running pump reports its
link and loop in ``DIR/pumpsim.live.json``, which ``pumpsim status`` shows as
``link`` and ``loop``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn, Protocol

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from pumpguard.protocol import describe_record

from . import offline
from .legacy import LegacyPump
from .panel import Button, PanelEvent
from .pump import Pump, PumpMode
from .runner import Firmware, LinkSupervisor, Port, ScaledClock, StorageFaults, run_pump
from .uart import Uart, UartError

log = logging.getLogger("pumpguard.pumpsim")

#: What the running pump reports about its link and loop, in the state directory.
LIVE_FILE = "pumpsim.live.json"
#: The live report is rewritten when it changes, at most this often.
LIVE_INTERVAL_S = 0.5


class CliError(Exception):
    """One line for stderr; exit status 2."""


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if args[:1] == ["status"]:
            return _status(_offline_parser("status").parse_args(args[1:]))
        if args[:1] == ["log"]:
            return _log(_offline_parser("log").parse_args(args[1:]))
        return _run(_run_parser().parse_args(args))
    except (CliError, offline.OfflineError) as exc:
        print(f"pumpsim: {exc}", file=sys.stderr)
        return 2


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit status 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see '{self.prog} --help')\n")


def _run_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="pumpsim",
        description="Run the simulated pump firmware on a serial port until stopped "
        "(also: 'pumpsim status --state DIR', 'pumpsim log --state DIR').",
    )
    parser.add_argument("--port", required=True, help="device path, pty path or pyserial URL")
    parser.add_argument("--state", required=True, type=Path, help="directory of persisted state")
    parser.add_argument(
        "--auto-confirm",
        action="store_true",
        help="simulate a user who opens pairing mode when a remote asks and confirms the code",
    )
    parser.add_argument(
        "--remote-bolus",
        action="store_true",
        help="simulate a user who switches remote bolus on in the pump menu",
    )
    parser.add_argument(
        "--prescriber-key",
        type=Path,
        help="simulate enrolling this prescriber public key (PEM) on the pump",
    )
    parser.add_argument(
        "--legacy",
        action="store_true",
        help="speak the unprotected recalled-style framing (demonstrates the attack)",
    )
    parser.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        help="run the pump's clock this many times faster (testing)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log every frame")
    return parser


def _offline_parser(command: str) -> argparse.ArgumentParser:
    parser = OneLineParser(prog=f"pumpsim {command}")
    parser.add_argument("--state", required=True, type=Path)
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def _say(text: str) -> None:
    print(text, flush=True)


def _run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(message)s",
    )
    if not args.time_scale > 0:
        raise CliError("--time-scale must be a positive number")
    prescriber = _read_prescriber(args.prescriber_key) if args.prescriber_key else None
    if args.legacy:
        return _run_legacy(args)
    flash, motor = offline.open_state(args.state)
    try:
        uart = Uart(args.port)
    except UartError as exc:
        flash.close()
        motor.close()
        raise CliError(str(exc)) from None
    clock = ScaledClock(args.time_scale)
    pump = Pump.boot(flash=flash, motor=motor, random_bytes=os.urandom, now=clock())
    _attach_front_panel(pump, args, prescriber)
    if args.verbose:
        pump.on_record = _log_record
    announce = f"[pump] running on {args.port}, state in {args.state}, time scale {args.time_scale}"

    def alarm(text: str) -> None:
        pump.panel.show("alarm", text)

    return _serve(
        pump, uart, clock, state=args.state, closers=(flash, motor), announce=announce, alarm=alarm
    )


def _run_legacy(args: argparse.Namespace) -> int:
    motor, serial = offline.open_legacy_state(args.state)
    try:
        uart = Uart(args.port)
    except UartError as exc:
        motor.close()
        raise CliError(str(exc)) from None
    clock = ScaledClock(args.time_scale)
    pump = LegacyPump(motor=motor, serial=serial, now=clock())
    announce = (
        f"[pump] LEGACY MODE: the recalled, unprotected design, serial {serial.hex()}. "
        "Anyone who knows the serial can command this pump; recordings replay for ever."
    )
    return _serve(pump, uart, clock, state=args.state, closers=(motor,), announce=announce)


def _serve(
    firmware: Firmware,
    uart: Uart,
    clock: ScaledClock,
    *,
    state: Path,
    closers: Sequence[Closable],
    announce: str,
    alarm: Callable[[str], None] | None = None,
) -> int:
    """Run the firmware's loop on the UART until SIGTERM or SIGINT, then close everything.

    Nothing on the link ends the loop (SPEC §3.1): the port is supervised,
    and reopened whenever it comes back.
    """
    stop = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    def reopen() -> Port:
        return Uart(uart.port)

    def show_alarm(text: str) -> None:
        if alarm is not None:
            alarm(text)
        else:
            _say(f"[pump display] alarm: {text}")

    link = LinkSupervisor(uart, reopen, name=uart.port)
    faults = StorageFaults(alarm=show_alarm)
    live = LiveReport(state / LIVE_FILE, link, faults)

    def read(timeout: float) -> bytes:
        data = link.read(timeout)
        live.update()
        return data

    # Handlers first: whoever waits for the announcement may signal at once.
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    live.update(force=True)
    _say(announce)
    try:
        run_pump(firmware, read=read, write=link.write, clock=clock, stop=stop, faults=faults)
    finally:
        link.close()
        live.update(force=True)
        for closer in closers:
            closer.close()
    _say("[pump] stopped")
    return 0


class LiveReport:
    """``DIR/pumpsim.live.json``: the running pump's link and loop, for ``pumpsim status``.

    Rewritten atomically when it changes, at most every :data:`LIVE_INTERVAL_S`;
    a state directory that cannot take it is logged once and otherwise ignored
    (the report is for the operator, the therapy does not depend on it).
    """

    def __init__(self, path: Path, link: LinkSupervisor, faults: StorageFaults) -> None:
        self._path = path
        self._link = link
        self._faults = faults
        self._written: dict[str, Any] | None = None
        self._written_at = -LIVE_INTERVAL_S
        self._failed = False

    def update(self, *, force: bool = False) -> None:
        report = {
            "pid": os.getpid(),
            "port": self._link.name,
            "link": self._link.stats.to_json(),
            "loop": self._faults.to_json(),
        }
        now = time.monotonic()
        if report == self._written or (not force and now - self._written_at < LIVE_INTERVAL_S):
            return
        self._written, self._written_at = report, now
        temporary = self._path.with_name(f".{self._path.name}.tmp")
        try:
            temporary.write_text(json.dumps({**report, "updated": time.time()}, sort_keys=True))
            os.replace(temporary, self._path)
        except OSError as exc:
            if not self._failed:
                self._failed = True
                log.warning("cannot write %s: %s", self._path, exc.strerror)


def _read_live(state: Path) -> dict[str, Any]:
    """The ``link`` and ``loop`` objects of ``pumpsim status`` (empty if pumpsim never ran)."""
    path = state / LIVE_FILE
    try:
        report = json.loads(path.read_text())
        link, loop, pid = report["link"], report["loop"], report["pid"]
        if not (isinstance(link, dict) and isinstance(loop, dict) and isinstance(pid, int)):
            raise TypeError
    except FileNotFoundError:
        return {}
    except OSError as exc:
        print(f"pumpsim: cannot read {path}: {exc.strerror}", file=sys.stderr)
        return {}
    except (ValueError, KeyError, TypeError):
        print(f"pumpsim: ignoring {path}: not a pumpsim live report", file=sys.stderr)
        return {}
    running = link.get("state") != "closed" and _process_exists(pid)
    return {
        "link": {**link, "port": report.get("port")},
        "loop": {**loop, "running": running, "updated": report.get("updated")},
    }


def _process_exists(pid: int) -> bool:
    """Whether ``pid`` is a live process (a killed pumpsim leaves its report behind)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Closable(Protocol):
    def close(self) -> None: ...


def _attach_front_panel(pump: Pump, args: argparse.Namespace, prescriber: bytes | None) -> None:
    """Print the display; let the flags press buttons, each saying what it simulates."""

    def on_event(event: PanelEvent) -> None:
        _say(f"[pump display] {event.kind}: {event.text}")
        if args.auto_confirm and event.kind == "pairing-request" and pump.mode is PumpMode.RUNNING:
            _say("[SIMULATED USER --auto-confirm] opening Menu > Remote > Pair on the pump")
            pump.panel.press(Button.PAIR)
        if args.remote_bolus and event.kind == "pairing" and event.text == "remote paired":
            # A new pairing switches remote bolus off (SPEC §9.5); this user turns it on again.
            _say("[SIMULATED USER --remote-bolus] switching remote bolus ON again after pairing")
            pump.panel.press(Button.REMOTE_BOLUS_ON)
        if args.auto_confirm and event.kind == "code":
            _say(
                "[SIMULATED USER --auto-confirm] confirming the code shown WITHOUT comparing "
                "it with the remote's screen"
            )
            pump.panel.press(Button.CONFIRM_CODE)

    pump.panel.listeners.append(on_event)
    if args.remote_bolus and not pump.persistent.remote_bolus_enabled:
        _say("[SIMULATED USER --remote-bolus] switching remote bolus ON in the pump menu")
        pump.panel.press(Button.REMOTE_BOLUS_ON)
    if prescriber is not None and pump.persistent.prescriber != prescriber:
        _say("[SIMULATED USER --prescriber-key] enrolling the prescriber key on the pump")
        pump.panel.press(Button.ENROL_PRESCRIBER, prescriber)


def _log_record(direction: str, record: bytes, verdict: str) -> None:
    arrow = "<-" if direction == "rx" else "->"
    log.info("%s %s %s", arrow, describe_record(record) if record else "frame", verdict)


def _read_prescriber(path: Path) -> bytes:
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except OSError as exc:
        raise CliError(f"cannot read prescriber key {path}: {exc.strerror}") from None
    except ValueError:
        raise CliError(f"{path} is not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise CliError(f"{path} is not an Ed25519 public key")
    return key.public_bytes_raw()


def _status(args: argparse.Namespace) -> int:
    status = offline.read_status(args.state)
    status.update(_read_live(args.state))
    if args.json:
        print(json.dumps(status, sort_keys=True))
    else:
        for key, value in status.items():
            print(f"{key}: {value}")
    if status.get("storage_ok") is False:
        print(
            f"pumpsim: pump storage in {args.state} is corrupt: {status.get('storage_error')}",
            file=sys.stderr,
        )
        return 2
    return 0


def _log(args: argparse.Namespace) -> int:
    try:
        entries = offline.read_log(args.state)
    except offline.LogInvalid as exc:
        print(f"pumpsim: audit log does NOT verify: {exc}", file=sys.stderr)
        return 1
    for entry in entries:
        print(json.dumps(entry.to_json(), sort_keys=True) if args.json else entry.describe())
    return 0
