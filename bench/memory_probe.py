"""The pump's memory under a flood of refused frames (S9), measured in its own process.

Usage, from the repository root::

    python -m bench.memory_probe --frames 1000000     # one JSON object on stdout

The real pump (bench/firmware.py, in-memory flash) gets ``--frames`` framed
records through ``Pump.receive_data``, every one refused, cycling through
eight kinds: a DATA record of random bytes (bad tag), a replay of an
accepted record, a fresh record with a flipped tag bit, line noise (bad
CRC), an oversized run of bytes with no delimiter, an unknown record type,
a HANDSHAKE_INIT of random bytes, and a PAIR_REQUEST while the pump is not
pairing.  The pump's clock advances by each frame's time on a 115200-baud
wire, and the pump is ticked every 20 ms of that clock, as its main loop
does; so a million frames are about 45 minutes of pump time, and the
rejection counts are written to the audit log as they would be (at most
about a dozen entries).  Every 10,000 frames the paired remote does a
status exchange (and a new handshake when its session is 30 minutes
old, as the client does), which keeps its session alive and shows the
legitimate remote is still served during the flood.

Memory is read twice: the resident set size (``/proc/self/statm``; on
systems without it, ``ru_maxrss``) after a warm-up of 10,000 frames and
after the flood, both after a ``gc.collect()``; then, with
:mod:`tracemalloc` on, the Python heap before and after another
``min(frames, 20,000)`` frames, with the three biggest growing allocation
sites.  The target is growth below 1 MiB.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import resource
import sys
import time
import tracemalloc
from collections.abc import Iterator
from typing import Final

from bench.firmware import PumpParty
from pumpguard.protocol import encode_frame, wire

WARM_UP_FRAMES: Final = 10_000
TRACED_FRAMES: Final = 20_000
STATUS_EVERY: Final = 10_000
TICK_S: Final = 0.02
BAUD: Final = 115_200
#: Distinct frames of each random kind, cycled (generating a million would
#: time the generator, not the pump).
POOL: Final = 64


def resident_bytes() -> int:
    """Current resident set size, or the peak where the current one cannot be read."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


def refused_frames(party: PumpParty) -> dict[str, list[bytes]]:
    """Frames of each kind; the pump refuses every one, every time."""
    rng = random.Random(6)
    session = party.session
    replays = []
    for _ in range(POOL):
        frame = encode_frame(session.seal(rng.randbytes(16)))
        party.send_frame(frame)  # accepted once (answered "malformed request")
        replays.append(frame)
    bad_tags = []
    for _ in range(POOL):
        record = session.seal(rng.randbytes(16))
        bad_tags.append(encode_frame(record[:-1] + bytes((record[-1] ^ 1,))))
    noise = []
    for _ in range(POOL):
        body = bytearray(encode_frame(bytes((wire.RecordType.DATA,)) + rng.randbytes(28)))
        body[-3] = body[-3] % 255 + 1  # a CRC byte changed, still no zero
        noise.append(bytes(body))
    return {
        "garbage": [
            encode_frame(bytes((wire.RecordType.DATA,)) + rng.randbytes(28)) for _ in range(POOL)
        ],
        "replay": replays,
        "bad-tag": bad_tags,
        "bad-crc": noise,
        "oversized": [bytes(rng.randrange(1, 256) for _ in range(400)) + b"\x00"],
        "unknown-type": [encode_frame(b"\x7f" + rng.randbytes(20)) for _ in range(POOL)],
        "handshake": [
            encode_frame(bytes((wire.RecordType.HANDSHAKE_INIT,)) + rng.randbytes(40))
            for _ in range(POOL)
        ],
        "pair-request": [
            encode_frame(bytes((wire.RecordType.PAIR_REQUEST,)) + rng.randbytes(32))
            for _ in range(POOL)
        ],
    }


def _cycle(frames: dict[str, list[bytes]]) -> Iterator[bytes]:
    pools = list(frames.values())
    index = 0
    while True:
        for pool in pools:
            yield pool[index % len(pool)]
        index += 1


def flood(party: PumpParty, frames: Iterator[bytes], count: int) -> float:
    """Send ``count`` refused frames; return the seconds it took."""
    pump, clock = party.rig.pump, party.rig.clock
    receive, tick, data_to_send = pump.receive_data, pump.tick, pump.data_to_send
    next_tick = clock.now + TICK_S
    start = time.perf_counter()
    for index in range(1, count + 1):
        frame = next(frames)
        clock.now += len(frame) * 10 / BAUD
        receive(frame, clock.now)
        if clock.now >= next_tick:
            tick(clock.now)
            next_tick = clock.now + TICK_S
        if data_to_send():
            raise AssertionError("the pump answered a refused frame")
        if index % STATUS_EVERY == 0:
            if party.session.needs_rekey(clock.now):
                party.connect()  # as the client does after 30 minutes (SPEC §8)
            party.status()  # raises if the remote is not served
    return time.perf_counter() - start


def measure(frame_count: int) -> dict[str, object]:
    party = PumpParty()
    pools = refused_frames(party)
    frames = _cycle(pools)
    seq_at_start = party.status().audit_next_seq
    flood(party, frames, WARM_UP_FRAMES)
    gc.collect()
    rss_before = resident_bytes()
    seconds = flood(party, frames, frame_count)
    gc.collect()
    rss_after = resident_bytes()
    status = party.status()
    entries = party.history(seq_at_start)
    rejection_entries = [entry for entry in entries if entry.event == "rejections"]

    traced_frames = min(frame_count, TRACED_FRAMES)
    tracemalloc.start()
    flood(party, frames, 1_000)
    gc.collect()
    before = tracemalloc.take_snapshot()
    traced_before = tracemalloc.get_traced_memory()[0]
    flood(party, frames, traced_frames)
    gc.collect()
    traced_after = tracemalloc.get_traced_memory()[0]
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    own = [tracemalloc.Filter(False, tracemalloc.__file__)]
    growing = [
        f"{stat.traceback[0].filename.rsplit('/', 1)[-1]}:{stat.traceback[0].lineno} "
        f"{stat.size_diff:+d} B"
        for stat in after.filter_traces(own).compare_to(before.filter_traces(own), "lineno")[:3]
        if stat.size_diff > 0
    ]
    party.close()
    return {
        "frames": frame_count,
        "kinds": sorted(pools),
        "seconds": seconds,
        "us_per_frame": seconds / frame_count * 1e6,
        "pump_seconds": party.rig.clock.now - 1000.0,
        "rss_before": rss_before,
        "rss_after": rss_after,
        "rss_growth": rss_after - rss_before,
        "traced_frames": traced_frames,
        "traced_growth": traced_after - traced_before,
        "traced_growing_sites": growing,
        "audit_entries_written": len(entries),
        "rejection_entries": len(rejection_entries),
        "remote_served": status.remote_bolus_enabled,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--frames", type=int, default=1_000_000)
    args = parser.parse_args(argv)
    if args.frames < 1:
        parser.error("--frames must be at least 1")
    print(json.dumps(measure(args.frames), sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
