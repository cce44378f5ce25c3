"""The pump's memory before and after a flood of refused frames (S9; SPEC §10.2).

bench/memory_probe.py runs in a subprocess of its own, so that its resident
set size is the pump's and nothing of pytest's: the real firmware on
in-memory flash gets ``N`` framed records through ``Pump.receive_data``,
every one refused (eight kinds, from line noise to replays and forged
handshakes), on a clock that runs at the frames' 115200-baud wire time with
the main loop's 20 ms ticks, while the paired remote keeps doing a status
exchange every 10,000 frames.

``N`` is 10,000 in the default smoke run (benchmarks disabled) and
1,000,000 with ``--benchmark-enable``; ``--memory-frames N`` sets it.

Asserted, because they are properties and not timings: the resident set
grows by less than 1 MiB (the target), the traced Python heap by less than
64 KiB over 20,000 more frames, the remote is served throughout, the pump
answers no refused frame, and the rejections reach the audit log as a few
aggregated entries (S10: about ``2 + log2(T / 60 s)`` for a flood of ``T``)
and nothing else is written.  The time is the whole subprocess (start-up
included); the probe's own per-frame time is in ``extra_info``.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from bench.conftest import SummaryTable
from bench.report import ROOT, memory_table

MIB = 1 << 20
SMOKE_FRAMES = 10_000
FULL_FRAMES = 1_000_000


def _probe(frames: int) -> dict[str, object]:
    completed = subprocess.run(  # noqa: S603 (our interpreter, our module, an int)
        [sys.executable, "-m", "bench.memory_probe", "--frames", str(frames)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr
    result: dict[str, object] = json.loads(completed.stdout)
    return result


def test_memory_after_refused_frames(
    benchmark: BenchmarkFixture, request: pytest.FixtureRequest, summary_table: SummaryTable
) -> None:
    benchmark.group = "memory: refused-frame flood (whole subprocess)"
    option = request.config.getoption("--memory-frames")
    frames = option if option is not None else SMOKE_FRAMES if benchmark.disabled else FULL_FRAMES
    result = benchmark.pedantic(  # type: ignore[no-untyped-call]
        _probe, args=(frames,), rounds=1, iterations=1
    )
    benchmark.extra_info["memory"] = result
    summary_table("memory under a refused-frame flood", memory_table(result))

    assert result["frames"] == frames
    assert result["remote_served"] is True
    rss_growth = result["rss_growth"]
    traced_growth = result["traced_growth"]
    assert isinstance(rss_growth, int)
    assert isinstance(traced_growth, int)
    assert rss_growth < MIB, f"resident memory grew by {rss_growth} bytes"
    assert traced_growth < 64 * 1024, result["traced_growing_sites"]
    # Aggregated, not one write per refusal: the log cannot be flooded (S10).
    pump_seconds = result["pump_seconds"]
    assert isinstance(pump_seconds, float)
    bound = 3 + math.log2(max(pump_seconds / 60, 1))
    written = result["audit_entries_written"]
    assert isinstance(written, int)
    assert result["rejection_entries"] == written
    assert 1 <= written <= bound
