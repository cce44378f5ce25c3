"""What a protected record costs, piece by piece: a profile of the hot path.

Usage, from the repository root::

    python -m bench.breakdown              # markdown tables, ~10 s
    python -m bench.breakdown --rounds 5   # quicker, rougher

cProfile cannot see inside a 2 us call, so this times the pieces instead.
Each case is a loop of ``n`` calls written out inline (no extra Python call
per iteration beyond what the case itself makes).  The cases run
*round-robin*: every round runs every case once, and a ratio is computed
within each round, then the median taken over rounds.  On a VM whose speed
swings by 2x from one second to the next, that is far steadier than
comparing medians taken seconds apart, so it is the cross-check for the
pytest-benchmark ratios.

Piece timings have the empty loop subtracted.  They are what the Python
operations in ``protocol/session.py`` cost in isolation; the sum is close
to, not exactly, the measured overhead (caches, specialisation).
"""

from __future__ import annotations

import argparse
import statistics
import struct
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESCCM

from bench.parties import make_pairing, make_sessions
from pumpguard.protocol import AuthenticationFailed, ReplayRefused, wire

PAYLOAD: Final = bytes(range(16))
_HEADER: Final = struct.Struct(">BI")
_MASK: Final = (1 << wire.REPLAY_WINDOW) - 1

#: A case runs its operation ``n`` times and returns the seconds it took.
Case = Callable[[int], float]


@dataclass(frozen=True)
class Row:
    label: str
    case: str
    #: Subtract the empty loop (pieces), or not (whole operations).
    net: bool = False


def _cases() -> dict[str, Case]:
    clock = time.perf_counter
    aead = AESCCM(bytes(range(16)), tag_length=wire.TAG_LEN)
    nonce = bytes(range(13))
    sealed = aead.encrypt(nonce, PAYLOAD, None)
    forged = sealed[:-1] + bytes((sealed[-1] ^ 1,))
    encrypt, decrypt = aead.encrypt, aead.decrypt

    # Sessions for the cases that move counters ...
    remote, pump = make_sessions(make_pairing())
    seal, open_ = remote.seal, pump.open
    # ... and for the refusals, which need a window nothing else moves.
    remote_r, pump_r = make_sessions(make_pairing(seed=1))
    refuse = pump_r.open
    replayed = remote_r.seal(PAYLOAD)
    refuse(replayed)
    fresh = remote_r.seal(PAYLOAD)
    bad_tag = fresh[:-1] + bytes((fresh[-1] ^ 1,))
    header = _HEADER.pack(wire.RecordType.DATA, 7)
    iv = bytes(wire.IV_LEN)
    pack, unpack_from = _HEADER.pack, _HEADER.unpack_from

    class Window:
        __slots__ = ("bitmap", "limit", "top")

        def __init__(self) -> None:
            self.top, self.bitmap, self.limit = -1, 0, wire.COUNTER_LIMIT

        def method(self, record: bytes) -> bytes:
            return record

    def empty(n: int) -> float:
        start = clock()
        for _ in range(n):
            pass
        return clock() - start

    def floor(n: int) -> float:
        start = clock()
        for _ in range(n):
            decrypt(nonce, encrypt(nonce, PAYLOAD, None), None)
        return clock() - start

    def seal_open(n: int) -> float:
        start = clock()
        for _ in range(n):
            open_(seal(PAYLOAD))
        return clock() - start

    def raw_encrypt(n: int) -> float:
        start = clock()
        for _ in range(n):
            encrypt(nonce, PAYLOAD, None)
        return clock() - start

    def raw_decrypt(n: int) -> float:
        start = clock()
        for _ in range(n):
            decrypt(nonce, sealed, None)
        return clock() - start

    def seal_only(n: int) -> float:
        start = clock()
        for _ in range(n):
            seal(PAYLOAD)
        return clock() - start

    def open_only(n: int) -> float:
        records = [seal(PAYLOAD) for _ in range(n)]
        start = clock()
        for record in records:
            open_(record)
        return clock() - start

    def raw_bad_tag(n: int) -> float:
        start = clock()
        for _ in range(n):
            try:
                decrypt(nonce, forged, None)
            except InvalidTag:
                continue
        return clock() - start

    def refuse_replay(n: int) -> float:
        start = clock()
        for _ in range(n):
            try:
                refuse(replayed)
            except ReplayRefused:
                continue
        return clock() - start

    def refuse_bad_tag(n: int) -> float:
        start = clock()
        for _ in range(n):
            try:
                refuse(bad_tag)
            except AuthenticationFailed:
                continue
        return clock() - start

    window = Window()
    method = window.method

    def method_call(n: int) -> float:
        start = clock()
        for _ in range(n):
            method(header)
        return clock() - start

    def struct_pack(n: int) -> float:
        start = clock()
        for counter in range(n):
            pack(3, counter)
        return clock() - start

    def struct_unpack(n: int) -> float:
        start = clock()
        for _ in range(n):
            unpack_from(fresh)[1]
        return clock() - start

    def seal_nonce(n: int) -> float:
        start = clock()
        for _ in range(n):
            header + iv
        return clock() - start

    def open_nonce(n: int) -> float:
        start = clock()
        for _ in range(n):
            fresh[:5] + iv
        return clock() - start

    def prepend_header(n: int) -> float:
        start = clock()
        for _ in range(n):
            header + sealed
        return clock() - start

    def slice_body(n: int) -> float:
        start = clock()
        for _ in range(n):
            fresh[5:]
        return clock() - start

    def checks(n: int) -> float:
        # seal: counter limit and length; open: length and type byte.
        limit = window.limit
        start = clock()
        for counter in range(n):
            if counter >= limit or len(PAYLOAD) > wire.MAX_PLAINTEXT_LEN:
                raise AssertionError
            if len(fresh) < 13 or fresh[0] != 3:
                raise AssertionError
        return clock() - start

    def window_in_order(n: int) -> float:
        # The check and the update of session.py, on a fresh, higher counter.
        w = Window()
        start = clock()
        for counter in range(n):
            top = w.top
            if counter > top:
                if counter >= w.limit:
                    raise AssertionError
            elif (w.bitmap >> (top - counter)) & 1:
                raise AssertionError
            if counter > top:
                shift = counter - top
                w.bitmap = ((w.bitmap << shift) | 1) & _MASK if shift < wire.REPLAY_WINDOW else 1
                w.top = counter
        return clock() - start

    def raise_value_error(n: int) -> float:
        start = clock()
        for _ in range(n):
            try:
                raise ValueError("counter already seen")
            except ValueError:
                pass
        return clock() - start

    def raise_protocol_error(n: int) -> float:
        start = clock()
        for _ in range(n):
            try:
                raise ReplayRefused("counter already seen")
            except ReplayRefused:
                continue
        return clock() - start

    return {
        "empty": empty,
        "floor": floor,
        "seal_open": seal_open,
        "raw_encrypt": raw_encrypt,
        "seal": seal_only,
        "raw_decrypt": raw_decrypt,
        "open": open_only,
        "raw_bad_tag": raw_bad_tag,
        "refuse_replay": refuse_replay,
        "refuse_bad_tag": refuse_bad_tag,
        "method_call": method_call,
        "checks": checks,
        "struct_pack": struct_pack,
        "struct_unpack": struct_unpack,
        "seal_nonce": seal_nonce,
        "prepend_header": prepend_header,
        "open_nonce": open_nonce,
        "slice_body": slice_body,
        "window": window_in_order,
        "raise_value_error": raise_value_error,
        "raise_protocol_error": raise_protocol_error,
    }


WHOLE: Final = (
    Row("floor: AES-CCM encrypt + decrypt", "floor"),
    Row("pumpguard seal + open", "seal_open"),
    Row("raw AES-CCM encrypt", "raw_encrypt"),
    Row("pumpguard seal", "seal"),
    Row("raw AES-CCM decrypt", "raw_decrypt"),
    Row("pumpguard open (fresh counter)", "open"),
    Row("raw AES-CCM decrypt refusing a bad tag", "raw_bad_tag"),
    Row("pumpguard refusing a replay", "refuse_replay"),
    Row("pumpguard refusing a bad tag", "refuse_bad_tag"),
)
PIECES: Final = (
    Row("method call (x2 per record)", "method_call", net=True),
    Row("limit, length and type checks (seal + open)", "checks", net=True),
    Row("struct pack of the header (seal)", "struct_pack", net=True),
    Row("struct unpack_from of the counter (open)", "struct_unpack", net=True),
    Row("nonce = header + IV (seal)", "seal_nonce", net=True),
    Row("record = header + ciphertext (seal)", "prepend_header", net=True),
    Row("nonce = record[:5] + IV (open)", "open_nonce", net=True),
    Row("ciphertext = record[5:] (open)", "slice_body", net=True),
    Row("replay window check + update, in order (open)", "window", net=True),
    Row("raise + catch ValueError", "raise_value_error", net=True),
    Row("raise + catch ReplayRefused (ProtocolError.__new__)", "raise_protocol_error", net=True),
)
#: (label, numerator case, denominator case, target)
RATIOS: Final = (
    ("seal+open / floor", "seal_open", "floor", 1.5),
    ("refuse replay / raw open", "refuse_replay", "raw_decrypt", 1.0),
    ("refuse bad tag / raw open", "refuse_bad_tag", "raw_decrypt", 1.3),
    ("raw AEAD refusing a bad tag / raw open", "raw_bad_tag", "raw_decrypt", None),
)


@dataclass
class Result:
    #: Per case, per round: nanoseconds per call.
    samples: dict[str, list[float]]

    def per_call(self, case: str, *, net: bool = False) -> tuple[float, float]:
        """Median and lowest over rounds, in ns, optionally net of the empty loop."""
        values = self.samples[case]
        if not net:
            return statistics.median(values), min(values)
        empty = self.samples["empty"]
        differences = [a - b for a, b in zip(values, empty, strict=True)]
        return statistics.median(differences), min(values) - min(empty)

    def ratio(self, numerator: str, denominator: str) -> tuple[float, float, float]:
        """Median, lowest and highest over rounds of the within-round ratio."""
        values = [
            a / b for a, b in zip(self.samples[numerator], self.samples[denominator], strict=True)
        ]
        return statistics.median(values), min(values), max(values)


def measure(*, rounds: int, n: int) -> Result:
    cases = _cases()
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for case in cases.values():  # warm up
        case(n // 10)
    for _ in range(rounds):
        for name, case in cases.items():
            samples[name].append(case(n) / n * 1e9)
    return Result(samples)


def render(result: Result, *, rounds: int, n: int) -> list[str]:
    """Markdown tables: whole operations, pieces, within-round ratios."""

    def cells(case: str, *, net: bool = False) -> str:
        middle, low = result.per_call(case, net=net)
        return f"{middle:.0f} | {low:.0f}"

    def beyond(case: str, aead: str) -> str:
        (middle, low), (aead_middle, aead_low) = result.per_call(case), result.per_call(aead)
        return f"*{middle - aead_middle:.0f}* | *{low - aead_low:.0f}*"

    lines = [
        f"Round-robin, {rounds} rounds of {n} calls per case, 16 B payload; "
        "ns per call, median and lowest over rounds.",
        "",
        "| operation | median ns | lowest ns |",
        "|---|---|---|",
    ]
    lines += [f"| {row.label} | {cells(row.case)} |" for row in WHOLE]
    lines += [
        f"| *seal beyond its AEAD call* | {beyond('seal', 'raw_encrypt')} |",
        f"| *open beyond its AEAD call* | {beyond('open', 'raw_decrypt')} |",
        "",
        "| piece (empty loop subtracted) | median ns | lowest ns |",
        "|---|---|---|",
    ]
    lines += [f"| {row.label} | {cells(row.case, net=True)} |" for row in PIECES]
    lines += [
        "",
        "| ratio within each round | median (lowest..highest) | target |",
        "|---|---|---|",
    ]
    for label, numerator, denominator, target in RATIOS:
        middle, low, high = result.ratio(numerator, denominator)
        goal = "—" if target is None else f"<= {target:.1f}x"
        lines.append(f"| {label} | {middle:.2f}x ({low:.2f}..{high:.2f}) | {goal} |")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Time the pieces of the record hot path.")
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("-n", type=int, default=2000, help="calls per case per round")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.n < 10:
        parser.error("need --rounds >= 1 and -n >= 10")
    result = measure(rounds=args.rounds, n=args.n)
    print("\n".join(render(result, rounds=args.rounds, n=args.n)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
