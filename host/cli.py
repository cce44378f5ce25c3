"""``pumpctl``: the remote on the command line (BRIEF command-line contract).

    pumpctl --port PORT --keys DIR [--legacy] [-v] [--json]
            pair | bolus UNITS | cancel | status | history | unpair | policy upload FILE
    pumpctl policy keygen --private FILE --public FILE
    pumpctl policy sign --key FILE --pump-id HEX --version N --max-bolus U --max-1h U
            --max-24h U --out FILE
    pumpctl link vnull
    pumpctl link tap --a PORT --b PORT --capture FILE [--seed N] [--drop P] [--duplicate P]
            [--reorder P] [--corrupt P] [--hold P] [--hold-s S] [--delay-s S] [--only DIR]
    pumpctl link replay --port PORT --capture FILE [--direction DIR] [--interval-s S]
            [--keep-timing]
    pumpctl demo

Exit status: 0 success; 2 usage or link error; 3 refused by the pump (the
reason on stderr); 4 outcome unknown (and how to settle it).  Every failure
prints exactly one line on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from pumpguard.protocol import (
    FramingError,
    LimitPolicy,
    Outcome,
    PolicyInvalid,
    decode_frame,
    describe_record,
    encode_policy,
    pulses_to_float_units,
    pulses_to_units,
    sign_policy,
    units_to_pulses,
)

from . import prescriber
from .capture import CapturedFrame, CaptureError, Direction
from .client import (
    ClientError,
    LinkDown,
    OutcomeEvicted,
    OutcomeUnknown,
    PumpRefused,
    RemoteClient,
)
from .journal import Journal, JournalError, SettledCommand, outcome_word
from .keystore import KeyStore, KeyStoreError
from .transport import LinkError, RecordChannel, SerialLink, create_vnull

log = logging.getLogger("pumpguard.pumpctl")

EXIT_OK = 0
EXIT_USAGE_OR_LINK = 2
#: BRIEF contract: the outcome of a bolus is unknown (and how to settle it).
EXIT_OUTCOME_UNKNOWN = 4


class UsageError(Exception):
    """Bad arguments or files; exit status 2."""


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit status 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see '{self.prog} --help')\n")


def _parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="pumpctl", description="Command a pumpguard pump as its remote controller."
    )
    parser.add_argument("--port", help="device path, pty path or pyserial URL (loop://, socket://)")
    parser.add_argument("--keys", type=Path, help="the remote's keys directory")
    parser.add_argument(
        "--legacy", action="store_true", help="talk to a 'pumpsim --legacy' (the recalled design)"
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every frame")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    pair = commands.add_parser("pair", help="pair with the pump (the pump must be in pairing mode)")
    pair.add_argument(
        "--auto-confirm",
        action="store_true",
        help="simulate a user who confirms the code on the remote WITHOUT comparing it "
        "(testing only: with no terminal to ask, pairing is otherwise refused)",
    )
    bolus = commands.add_parser("bolus", help="deliver UNITS of insulin, exactly once")
    bolus.add_argument("units", help="dose in units, a multiple of 0.05 (e.g. 1.5)")
    commands.add_parser("cancel", help="stop the bolus in progress")
    commands.add_parser("status", help="the pump's status (also settles pending commands)")
    commands.add_parser("history", help="the pump's audit log, verified")
    commands.add_parser("unpair", help="erase this remote's key on the pump and here")
    policy = commands.add_parser("policy", help="prescriber limits policies")
    policy_commands = policy.add_subparsers(dest="policy_command", required=True)
    keygen = policy_commands.add_parser("keygen", help="make a prescriber key pair")
    keygen.add_argument("--private", type=Path, required=True, help="private key file to write")
    keygen.add_argument("--public", type=Path, required=True, help="public key file to write")
    sign = policy_commands.add_parser("sign", help="sign a limits policy for one pump")
    sign.add_argument("--key", type=Path, required=True, help="prescriber private key")
    sign.add_argument("--pump-id", required=True, help="the pump's id (hex, from 'status')")
    sign.add_argument("--version", type=int, required=True, help="must exceed the pump's")
    sign.add_argument("--max-bolus", required=True, help="units")
    sign.add_argument("--max-1h", required=True, help="units per rolling hour")
    sign.add_argument("--max-24h", required=True, help="units per rolling 24 hours")
    sign.add_argument("--out", type=Path, required=True, help="signed policy file to write")
    upload = policy_commands.add_parser("upload", help="carry a signed policy to the pump")
    upload.add_argument("file", type=Path)
    link = commands.add_parser("link", help="link tools")
    link_commands = link.add_subparsers(dest="link_command", required=True)
    link_commands.add_parser("vnull", help="create a linked pty pair and print both paths")
    tap = link_commands.add_parser(
        "tap",
        help="relay between two ports, recording every frame to a pcap file, injecting faults",
    )
    tap.add_argument("--a", required=True, metavar="PORT", help="one port (e.g. the remote's side)")
    tap.add_argument("--b", required=True, metavar="PORT", help="the other (e.g. the pump's side)")
    tap.add_argument(
        "--capture", required=True, type=Path, metavar="FILE", help="pcap file to write"
    )
    faults = tap.add_argument_group("faults (per frame, seeded: the same seed, the same faults)")
    faults.add_argument("--seed", type=int, default=0, help="fault seed (default 0)")
    faults.add_argument("--drop", type=_rate, default=0.0, metavar="P", help="drop probability")
    faults.add_argument(
        "--duplicate", type=_rate, default=0.0, metavar="P", help="send a frame twice"
    )
    faults.add_argument(
        "--reorder", type=_rate, default=0.0, metavar="P", help="send a frame after the next one"
    )
    faults.add_argument(
        "--corrupt", type=_rate, default=0.0, metavar="P", help="flip one random bit of a frame"
    )
    faults.add_argument(
        "--hold", type=_rate, default=0.0, metavar="P", help="hold a frame back for --hold-s"
    )
    faults.add_argument(
        "--hold-s", type=_seconds, default=5.0, metavar="S", help="how long (default 5)"
    )
    faults.add_argument(
        "--delay-s", type=_seconds, default=0.0, metavar="S", help="latency added to every frame"
    )
    faults.add_argument(
        "--only", choices=sorted(_DIRECTIONS), help="apply the faults in one direction only"
    )
    replay = link_commands.add_parser("replay", help="send the frames of a capture again")
    # Also accepted before the command, like every pumpctl command's --port.
    replay.add_argument("--port", dest="replay_port", metavar="PORT", help="where to send them")
    replay.add_argument(
        "--capture", required=True, type=Path, metavar="FILE", help="pcap file from 'link tap'"
    )
    replay.add_argument(
        "--direction",
        choices=sorted(_DIRECTIONS),
        help="only the frames that went this way (default: all)",
    )
    replay.add_argument(
        "--interval-s", type=_seconds, default=0.05, metavar="S", help="pause between frames"
    )
    replay.add_argument(
        "--keep-timing", action="store_true", help="reproduce the recorded gaps instead"
    )
    commands.add_parser("demo", help="the whole story in one process, nothing to set up")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    try:
        return _dispatch(args)
    except ClientError as exc:
        _fail(str(exc))
        return exc.exit_status
    except (UsageError, KeyStoreError, JournalError, LinkError, PolicyInvalid, CaptureError) as exc:
        _fail(str(exc))
        return EXIT_USAGE_OR_LINK
    except KeyboardInterrupt:
        _fail("interrupted")
        return EXIT_USAGE_OR_LINK


def _fail(text: str) -> None:
    print(f"pumpctl: {text}", file=sys.stderr)


def _dispatch(args: argparse.Namespace) -> int:
    command = args.command
    if command == "demo":
        from .demo import run_demo  # imports the simulated pump: only for the demo

        return run_demo()
    if command == "link":
        if args.link_command == "tap":
            return _tap(args)
        if args.link_command == "replay":
            return _replay(args)
        return _vnull()
    if command == "policy" and args.policy_command == "keygen":
        prescriber.keygen(args.private, args.public)
        print(f"prescriber key pair written: {args.private} (keep secret), {args.public}")
        return EXIT_OK
    if command == "policy" and args.policy_command == "sign":
        return _sign_policy(args)
    if args.legacy:
        from .legacy_cli import run_legacy

        return run_legacy(args)
    with _connected(args) as client:
        return _COMMANDS[command if command != "policy" else "upload"](client, args)


class _connected:
    """Open the port, keys and journal; settle pending commands first (S7)."""

    def __init__(self, args: argparse.Namespace) -> None:
        if not args.port or not args.keys:
            raise UsageError(f"'{args.command}' needs --port PORT and --keys DIR")
        self._args = args

    def __enter__(self) -> RemoteClient:
        args = self._args
        self._keys = KeyStore.open(args.keys)
        self._journal = Journal.open(args.keys)
        try:
            self._link = SerialLink.open(args.port)
        except LinkError:
            self._journal.close()
            raise
        try:
            return self._settled_client()
        except BaseException:
            self.__exit__()
            raise

    def _settled_client(self) -> RemoteClient:
        args = self._args
        channel = RecordChannel(self._link, on_frame=_log_frame if args.verbose else None)
        client = RemoteClient(channel, self._keys, self._journal)
        if args.command == "pair" or self._keys.pairing() is None:
            return client
        settled: list[SettledCommand] = []
        # 'cancel' must not wait for a running bolus to end before stopping it,
        # and 'status' shows it as active: neither follows it to its end.
        unknown = client.settle_pending(
            follow=args.command not in ("cancel", "status"), on_settled=settled.append
        )
        for command in settled:
            print(
                f"pumpctl: earlier bolus {command.command_id.hex()[:8]} settled: "
                f"{outcome_word(command.outcome).replace('_', ' ')}, "
                f"{pulses_to_units(command.delivered)} U of {pulses_to_units(command.pulses)} U",
                file=sys.stderr,
            )
        evicted = [p.command_id for p in self._journal.pending() if p.evicted]
        if evicted and args.command == "bolus":
            raise OutcomeEvicted(evicted[0])
        if args.command != "history":
            # 'history' settles them itself; every other command says how.
            for command_id in evicted:
                _fail(str(OutcomeEvicted(command_id)))
        if unknown and args.command == "bolus":
            raise ClientError(
                f"bolus {unknown[0].hex()[:8]} is still unsettled (no answer from the pump); "
                "run 'pumpctl status' when the link is back"
            )
        return client

    def __exit__(self, *exc: object) -> None:
        self._link.close()
        self._journal.close()


def _log_frame(direction: str, record: bytes | None, verdict: str) -> None:
    arrow = "->" if direction == "send" else "<-"
    log.info("%s %s %s", arrow, describe_record(record) if record else "frame", verdict)


def _out(args: argparse.Namespace, data: dict[str, Any], text: str) -> None:
    print(json.dumps(data, sort_keys=True) if args.json else text, flush=True)


def _pair(client: RemoteClient, args: argparse.Namespace) -> int:
    # With --json, stdout carries only the result; people's lines go to stderr.
    human = sys.stderr if args.json else sys.stdout

    def confirm(code: str) -> bool:
        spaced = f"{code[:3]} {code[3:]}"
        print(f"pairing code: {spaced}  (the pump shows a code too: they must match)", file=human)
        if getattr(args, "auto_confirm", False):
            print("[SIMULATED USER --auto-confirm] confirming WITHOUT comparing", file=human)
            return True
        if sys.stdin is not None and sys.stdin.isatty():
            answer = input("Does the pump show the same code? [y/N] ").strip().lower()
            return answer in ("y", "yes")
        # Confirming blindly would let a man in the middle pair this remote
        # with himself even when the pump's user rejects (SPEC §9.6).
        raise ClientError(
            "no terminal to confirm the pairing code: run 'pumpctl pair' in a terminal, "
            "or pass 'pair --auto-confirm' to simulate a user who confirms (testing only)"
        )

    print("asking the pump to pair: open Menu > Remote > Pair on the pump", file=human, flush=True)
    result = client.pair(confirm)
    _out(
        args,
        {"paired": True, "pump_id": client.pump_id_hex()},
        f"paired with pump {client.pump_id_hex()} (code {result.code})",
    )
    return EXIT_OK


def _bolus(client: RemoteClient, args: argparse.Namespace) -> int:
    try:
        pulses = units_to_pulses(args.units)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    last = [-1.0]

    def progress(delivered: int, requested: int) -> None:
        now = time.monotonic()
        if args.json or (now - last[0] < 0.5 and delivered != requested):
            return
        last[0] = now
        print(
            f"delivering: {pulses_to_units(delivered)} of {pulses_to_units(requested)} U",
            flush=True,
        )

    if not args.json:
        print("press Ctrl-C to cancel the bolus", flush=True)
    try:
        result = client.bolus(pulses, progress)
    except KeyboardInterrupt:
        return _cancel_after_interrupt(client, args)
    data = {
        "command_id": result.command_id.hex(),
        "outcome": result.outcome.name.lower(),
        "requested_units": pulses_to_float_units(result.requested_pulses),
        "delivered_units": pulses_to_float_units(result.delivered_pulses),
    }
    _out(
        args,
        data,
        f"bolus {result.outcome.name.lower()}: {pulses_to_units(result.delivered_pulses)} U "
        f"of {pulses_to_units(result.requested_pulses)} U",
    )
    return EXIT_OK


def _cancel_after_interrupt(client: RemoteClient, args: argparse.Namespace) -> int:
    """Ctrl-C during a bolus: stop it on the pump, then settle the journal."""
    print("cancelling the bolus on the pump...", file=sys.stderr, flush=True)
    # Refused means nothing was running: it had not started, or had just finished.
    with contextlib.suppress(PumpRefused):
        _cancel(client, args)
    unknown = client.settle_pending()
    if unknown:
        raise OutcomeUnknown(unknown[0], "interrupted before the pump answered")
    return EXIT_OK


def _cancel(client: RemoteClient, args: argparse.Namespace) -> int:
    outcome = client.cancel()
    _out(
        args,
        {
            "command_id": outcome.command_id.hex(),
            "outcome": outcome.outcome.name.lower(),
            "delivered_units": pulses_to_float_units(outcome.delivered),
        },
        f"bolus cancelled after {pulses_to_units(outcome.delivered)} U",
    )
    return EXIT_OK


def _status(client: RemoteClient, args: argparse.Namespace) -> int:
    status = client.status()
    data = {
        "pump_id": status.pump_id.hex(),
        "remote_bolus_enabled": status.remote_bolus_enabled,
        "bolus_units_delivered": pulses_to_float_units(status.bolus_pulses),
        "basal_units_delivered": pulses_to_float_units(status.basal_pulses),
        "reservoir_units": pulses_to_float_units(status.reservoir_pulses),
        "active_bolus": None
        if not status.active_command_id
        else {
            "command_id": status.active_command_id.hex(),
            "requested_units": pulses_to_float_units(status.active_requested),
            "delivered_units": pulses_to_float_units(status.active_delivered),
        },
        "limits": {
            "version": status.limits_version,
            "max_bolus_units": pulses_to_float_units(status.max_bolus_pulses),
            "max_1h_units": pulses_to_float_units(status.max_1h_pulses),
            "max_24h_units": pulses_to_float_units(status.max_24h_pulses),
        },
        "audit_entries": status.audit_next_seq,
    }
    lines = [f"{key}: {value}" for key, value in data.items()]
    _out(args, data, "\n".join(lines))
    return EXIT_OK


def _history(client: RemoteClient, args: argparse.Namespace) -> int:
    entries = client.verified_history()
    for entry in entries:
        print(json.dumps(entry.to_json(), sort_keys=True) if args.json else entry.describe())
    # A bolus the pump no longer remembers (SPEC §12.4) is settled from its log.
    status = EXIT_OK
    for command in client.settle_from_history(entries):
        which = f"earlier bolus {command.command_id.hex()[:8]}"
        if command.outcome is Outcome.EVICTED:
            _fail(
                f"{which} is no longer in the pump's log either: its outcome cannot be known - "
                f"count it as possibly delivered ({pulses_to_units(command.pulses)} U)"
            )
            status = EXIT_OUTCOME_UNKNOWN
        else:
            _fail(
                f"{which} settled from the pump's log: {outcome_word(command.outcome)}, "
                f"{pulses_to_units(command.delivered)} U of {pulses_to_units(command.pulses)} U"
            )
    return status


def _unpair(client: RemoteClient, args: argparse.Namespace) -> int:
    client.unpair()
    _out(args, {"unpaired": True}, "unpaired: the pump and this remote erased the key")
    return EXIT_OK


def _upload(client: RemoteClient, args: argparse.Namespace) -> int:
    policy, signature = prescriber.read_signed_policy(args.file)
    client.upload_policy(policy, signature)
    _out(args, {"uploaded": True}, "limits policy accepted by the pump")
    return EXIT_OK


def _sign_policy(args: argparse.Namespace) -> int:
    try:
        limits = LimitPolicy(
            args.version,
            units_to_pulses(args.max_bolus),
            units_to_pulses(args.max_1h),
            units_to_pulses(args.max_24h),
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    try:
        pump = bytes.fromhex(args.pump_id)
    except ValueError:
        raise UsageError(
            f"--pump-id {args.pump_id!r} is not hex (the 16-digit pump_id 'pumpctl status' shows)"
        ) from None
    key = prescriber.read_private(args.key)
    try:
        body = encode_policy(limits, for_pump=pump)
    except Exception as exc:  # PolicyInvalid or a wrong-length pump id
        raise UsageError(f"policy not signed: {exc}") from None
    prescriber.write_signed_policy(args.out, body, sign_policy(body, key))
    print(f"signed limits policy v{args.version} for pump {args.pump_id}: {args.out}")
    return EXIT_OK


def _vnull() -> int:
    a, b, cable = create_vnull()
    print(a)
    print(b, flush=True)
    try:
        while cable.running:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        cable.close()
    if cable.failure is not None:
        raise LinkDown(f"null-modem relay failed: {cable.failure}")
    return EXIT_OK


_DIRECTIONS = {"a-to-b": Direction.A_TO_B, "b-to-a": Direction.B_TO_A}


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a probability between 0 and 1")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not (math.isfinite(value) and value >= 0.0):
        raise argparse.ArgumentTypeError(f"{text} is not a non-negative number of seconds")
    return value


def _log_captured(frame: CapturedFrame) -> None:
    try:
        what = describe_record(decode_frame(frame.frame[:-1]))
    except FramingError:
        what = f"{len(frame.frame)}-byte damaged frame"
    log.info("%s %s", frame.direction.arrow, what)


def _tap(args: argparse.Namespace) -> int:
    from .tap import FaultPlan, run_tap

    plan = FaultPlan(
        seed=args.seed,
        drop_rate=args.drop,
        duplicate_rate=args.duplicate,
        reorder_rate=args.reorder,
        corrupt_rate=args.corrupt,
        hold_rate=args.hold,
        hold_s=args.hold_s,
        delay_s=args.delay_s,
        only=_DIRECTIONS.get(args.only) if args.only else None,
    )
    stop = threading.Event()
    # Ctrl-C and SIGTERM end the tap cleanly: held frames go out, the capture is closed.
    signal.signal(signal.SIGINT, lambda signum, frame: stop.set())
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    print(f"tap: {args.a} <-> {args.b}, recording to {args.capture}; Ctrl-C stops", flush=True)
    summary = run_tap(
        args.a,
        args.b,
        args.capture,
        plan,
        stop,
        on_frame=_log_captured if args.verbose else None,
    )
    print(summary.describe(), flush=True)
    if summary.failure is not None:
        raise LinkDown(f"tap stopped: {summary.failure}")
    return EXIT_OK


def _replay(args: argparse.Namespace) -> int:
    from .tap import replay

    port = args.replay_port or args.port
    if not port:
        raise UsageError("'link replay' needs --port PORT")
    direction = _DIRECTIONS.get(args.direction) if args.direction else None
    interval = None if args.keep_timing else args.interval_s
    sent = replay(port, args.capture, direction, interval)
    print(f"replayed {sent} frame(s) from {args.capture} to {port}", flush=True)
    return EXIT_OK


_COMMANDS: dict[str, Callable[[RemoteClient, argparse.Namespace], int]] = {
    "pair": _pair,
    "bolus": _bolus,
    "cancel": _cancel,
    "status": _status,
    "history": _history,
    "unpair": _unpair,
    "upload": _upload,
}
