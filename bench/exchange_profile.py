"""What a command exchange with the real firmware is made of: a profile.

Usage, from the repository root::

    python -m bench.exchange_profile             # markdown tables, ~10 s
    python -m bench.exchange_profile --rounds 50 # quicker, rougher

Three paths of bench_exchange.py are taken apart, on the same
:class:`~bench.firmware.PumpParty` (the real pump on in-memory flash):

* a **bolus exchange** (BolusPrepare + BolusCommit, both sides);
* a **status exchange** (StatusRequest + Status, both sides);
* the pump **refusing a garbage frame** (16 B plaintext, DATA type, bad tag).

For each, the pieces are timed by wrapping them with ``perf_counter``
(*instrumented*): every piece's own time, its sub-pieces taken out, per
exchange, median over rounds; what no piece claims is the "rest" (dispatch,
dataclasses, enums, logging calls), less the wrappers' own cost, which is
measured and shown on its own line.  Rounds with and without the wrappers
alternate, so the two totals are comparable on a machine whose speed drifts.  Then the
same path runs under :mod:`cProfile` and the functions with the most own
time are listed, as a cross-check (cProfile's per-call overhead inflates
Python code against C code, so its shares lean towards Python).

The wrapping replaces attributes of this process's pump and classes only
(the process exits afterwards); nothing in the firmware changes.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Final

import pumpguard.firmware_sim.audit
import pumpguard.firmware_sim.link
import pumpguard.firmware_sim.pump
from bench import firmware as bench_firmware
from bench.firmware import PumpParty
from pumpguard.firmware_sim.pump import Pump
from pumpguard.firmware_sim.state import encode_state
from pumpguard.protocol import (
    FrameDecoder,
    SecureSession,
    audit_entry,
    decode_message,
    encode_frame,
    encode_message,
    wire,
)

#: A rejected-frame payload size, as the smallest of bench_record.py's.
REFUSAL_SIZE: Final = 16


@dataclass
class _Tracker:
    """Own time per label, with nesting: a piece's children are taken out of it."""

    own: dict[str, float] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    _children: list[float] = field(default_factory=list)

    def wrap(self, label: str, function: Callable[..., Any]) -> Callable[..., Any]:
        clock = time.perf_counter

        def timed(*args: Any, **kwargs: Any) -> Any:
            self._children.append(0.0)
            start = clock()
            try:
                return function(*args, **kwargs)
            finally:
                elapsed = clock() - start
                children = self._children.pop()
                self.own[label] = self.own.get(label, 0.0) + elapsed - children
                self.calls[label] = self.calls.get(label, 0) + 1
                if self._children:
                    self._children[-1] += elapsed

        return timed

    def take(self) -> dict[str, float]:
        own, self.own = self.own, {}
        return own


class _SigningKey:
    """Stands in for the audit log's Ed25519 key, timing ``sign``."""

    def __init__(self, key: Any, tracker: _Tracker) -> None:
        self._key = key
        self.sign = tracker.wrap("Ed25519 sign of the audit entry", key.sign)

    def public_key(self) -> Any:
        return self._key.public_key()


@contextmanager
def _patched(target: object, name: str, value: object) -> Iterator[None]:
    original = getattr(target, name)
    setattr(target, name, value)
    try:
        yield
    finally:
        setattr(target, name, original)


@contextmanager
def _instrumented(party: PumpParty, tracker: _Tracker) -> Iterator[None]:
    """Wrap the pieces of an exchange, on this party and on the shared classes."""
    pump: Any = party.rig.pump  # private attributes of the firmware are reached on purpose
    wrap = tracker.wrap
    records = "record layer: SecureSession.seal/open (AES-CCM inside)"
    framing = "framing: COBS + CRC-16, both ways"
    messages = "messages: CBOR encode/decode with schema checks"
    patches: list[tuple[object, str, object]] = [
        (SecureSession, "seal", wrap(records, SecureSession.seal)),
        (SecureSession, "open", wrap(records, SecureSession.open)),
        (FrameDecoder, "next_record", wrap(framing, FrameDecoder.next_record)),
        (bench_firmware, "encode_frame", wrap(framing, encode_frame)),
        (pumpguard.firmware_sim.link, "encode_frame", wrap(framing, encode_frame)),
        (bench_firmware, "encode_message", wrap(messages, encode_message)),
        (bench_firmware, "decode_message", wrap(messages, decode_message)),
        (pumpguard.firmware_sim.link, "encode_message", wrap(messages, encode_message)),
        (pumpguard.firmware_sim.link, "decode_message", wrap(messages, decode_message)),
        (
            pumpguard.firmware_sim.pump,
            "encode_state",
            wrap("state: CBOR of the persistent state (64 outcomes)", encode_state),
        ),
        (
            pump._main_store,
            "commit",
            wrap(
                "state: snapshot commit (2 flash programs, read-back, CRC-32)",
                pump._main_store.commit,
            ),
        ),
        (
            pump._delivery_store,
            "commit",
            wrap("delivery snapshot: commit to flash", pump._delivery_store.commit),
        ),
        (
            pump,
            "persist_delivery",
            wrap("delivery snapshot: build + CBOR", pump.persist_delivery),
        ),
        (
            pumpguard.firmware_sim.audit,
            "encode_entry",
            wrap(
                "audit entry: CBOR (twice: bound check, then the entry)",
                audit_entry.encode_entry,
            ),
        ),
        (pump._audit, "_key", _SigningKey(pump._audit._key, tracker)),
        (
            pump._audit,
            "append",
            wrap(
                "audit entry: checks, SHA-256 chain, flash program, read-back", pump._audit.append
            ),
        ),
        (
            pump._audit,
            "note_rejection",
            wrap("audit: counting the rejection (RAM)", pump._audit.note_rejection),
        ),
        (pump._ledger, "check", wrap("limits: ledger check", pump._ledger.check)),
        (pump._ledger, "commit", wrap("limits: ledger check + reservation", pump._ledger.commit)),
        (pump._ledger, "snapshot", wrap("limits: ledger snapshot", pump._ledger.snapshot)),
        (
            Pump,
            "audit_public_key",
            property(
                wrap(
                    "status: audit public key from its seed (Ed25519)",
                    vars(Pump)["audit_public_key"].fget,
                )
            ),
        ),
        (
            Pump,
            "pump_id",
            property(
                wrap("status: pump id (X25519 public key, SHA-256)", vars(Pump)["pump_id"].fget)
            ),
        ),
    ]
    with _all_patched(patches):
        yield


@contextmanager
def _all_patched(patches: list[tuple[object, str, object]]) -> Iterator[None]:
    if not patches:
        yield
        return
    (target, name, value), rest = patches[0], patches[1:]
    with _patched(target, name, value), _all_patched(rest):
        yield


@dataclass(frozen=True)
class _Path:
    title: str
    #: One exchange (or refusal) per call.
    run: Callable[[], object]
    #: Untimed work between calls.
    between: Callable[[], None]
    per_round: int


def _paths(party: PumpParty) -> list[_Path]:
    for _ in range(70):  # the state holds its full 64 outcomes from here on
        party.bolus_exchange()
        party.end_bolus()
    session = party.session
    fresh = session.seal(bytes(REFUSAL_SIZE))
    garbage = encode_frame(fresh[:-1] + bytes((fresh[-1] ^ 1,)))
    receive, clock = party.rig.pump.receive_data, party.rig.clock

    def refuse() -> None:
        receive(garbage, clock.now)

    refuse()  # the first refusal of a flood writes the aggregated entry at once
    return [
        _Path(
            "bolus exchange (prepare + commit, both sides)",
            party.bolus_exchange,
            party.end_bolus,
            1,
        ),
        _Path("status exchange (both sides)", party.status, lambda: None, 10),
        _Path(
            f"pump refusing a garbage frame ({REFUSAL_SIZE} B, bad tag)", refuse, lambda: None, 100
        ),
    ]


def _wrapper_cost(n: int = 50_000) -> float:
    """Seconds one wrapper adds to its caller, measured on a no-op inside a wrapped parent."""
    tracker = _Tracker()

    def noop() -> None:
        return None

    wrapped = tracker.wrap("noop", noop)

    def plain_loop() -> None:
        for _ in range(n):
            noop()

    def wrapped_loop() -> None:
        for _ in range(n):
            wrapped()

    timings: dict[str, list[float]] = {"plain": [], "wrapped": []}
    for _ in range(5):
        for name, loop in (("plain", plain_loop), ("wrapped", wrapped_loop)):
            start = time.perf_counter()
            tracker.wrap("parent", loop)()
            timings[name].append(time.perf_counter() - start)
    return max(0.0, (min(timings["wrapped"]) - min(timings["plain"])) / n)


REST: Final = "rest: dispatch, checks, dataclasses, enums, logging calls"
INSTRUMENTATION: Final = "instrumentation (wrapper calls x their measured cost)"


@dataclass(frozen=True)
class _Measured:
    #: Median seconds per call, nothing wrapped.
    plain: float
    #: Median seconds per call, wrapped.
    wrapped: float
    #: Median own seconds per call of each piece (rest and instrumentation included).
    pieces: dict[str, float]


def _measure(path: _Path, party: PumpParty, rounds: int) -> _Measured:
    """Time the path plain and wrapped, alternating round by round.

    Alternating keeps the two comparable on a machine whose speed drifts.
    The wrappers' own cost lands mostly in their callers' time; it is
    estimated (calls x the cost of one wrapper around a no-op) and shown as
    its own line, taken out of the rest.
    """
    clock = time.perf_counter
    tracker = _Tracker()
    whole = tracker.wrap("whole", path.run)
    plain: list[float] = []
    per_piece: dict[str, list[float]] = {}
    totals: list[float] = []
    wrapped_calls: list[int] = []
    for _ in range(rounds):
        total = 0.0
        for _ in range(path.per_round):
            path.between()
            start = clock()
            path.run()
            total += clock() - start
        plain.append(total / path.per_round)
        with _instrumented(party, tracker):
            for _ in range(path.per_round):
                path.between()
                tracker.take()
                tracker.calls.clear()
                whole()
                own = tracker.take()
                for label, seconds in own.items():
                    per_piece.setdefault(label, []).append(seconds)
                totals.append(sum(own.values()))
                wrapped_calls.append(sum(tracker.calls.values()) - 1)
    rest = statistics.median(per_piece.pop("whole", [0.0]))
    medians = {label: statistics.median(values) for label, values in per_piece.items()}
    overhead = min(rest, statistics.median(wrapped_calls) * _wrapper_cost())
    medians[REST] = rest - overhead
    medians[INSTRUMENTATION] = overhead
    return _Measured(statistics.median(plain), statistics.median(totals), medians)


def _profile_path(path: _Path, rounds: int, top: int) -> list[tuple[str, int, float]]:
    """``(function, calls per call, own us per call)`` of the top functions under cProfile."""
    profiler = cProfile.Profile()
    calls = 0
    for _ in range(rounds):
        for _ in range(path.per_round):
            path.between()
            profiler.enable()
            path.run()
            profiler.disable()
            calls += 1
    stats: Any = pstats.Stats(profiler)
    rows = []
    for (filename, line, name), (_, ncalls, own, _, _) in stats.stats.items():
        where = name if filename == "~" else f"{_short(filename)}:{line} {name}"
        rows.append((where, ncalls / calls, own / calls * 1e6))
    rows.sort(key=lambda row: -row[2])
    return rows[:top]


def _short(filename: str) -> str:
    for root in ("protocol/", "firmware_sim/", "bench/", "host/"):
        index = filename.rfind(root)
        if index >= 0:
            return filename[index:]
    return filename.rsplit("/", 1)[-1]


def _section(path: _Path, party: PumpParty, rounds: int, top: int) -> list[str]:
    measured = _measure(path, party, rounds)
    pieces, instrumented = dict(measured.pieces), measured.wrapped
    lines = [
        f"**{path.title}**: {measured.plain * 1e6:.1f} us median unwrapped, "
        f"{instrumented * 1e6:.1f} us wrapped (rounds alternate).",
        "",
        "| piece (own time, children taken out) | us per call | share |",
        "|---|---|---|",
    ]
    overhead = pieces.pop(INSTRUMENTATION)
    for label, seconds in sorted(pieces.items(), key=lambda item: -item[1]):
        lines.append(f"| {label} | {seconds * 1e6:.1f} | {seconds / instrumented:.0%} |")
    lines.append(
        f"| *{INSTRUMENTATION}* | *{overhead * 1e6:.1f}* | *{overhead / instrumented:.0%}* |"
    )
    lines += [
        "",
        "| cProfile: function (top own time) | calls | own us per call |",
        "|---|---|---|",
    ]
    for where, calls, own in _profile_path(path, rounds, top):
        lines.append(f"| `{where}` | {calls:g} | {own:.1f} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=200, help="rounds per path (default 200)")
    parser.add_argument("--top", type=int, default=8, help="cProfile rows per path (default 8)")
    args = parser.parse_args(argv)
    party = PumpParty()
    try:
        lines = [
            f"Real pump on in-memory flash; {args.rounds} rounds per path (a bolus round is "
            "one exchange, a status round 10, a refusal round 100); medians per call. "
            f"No fsync (in-memory flash). AES-CCM tag {wire.TAG_LEN} B.",
        ]
        for path in _paths(party):
            lines += ["", *_section(path, party, args.rounds, args.top)]
    finally:
        party.close()
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
