"""Run the benchmarks and rewrite the results section of bench/README.md.

Usage, from anywhere::

    python bench/report.py              # 3 runs, rewrite bench/README.md and the chart
    python bench/report.py --runs 1     # quicker, no spread
    python bench/report.py --dry-run    # print the section, change nothing
    python bench/report.py --no-breakdown   # skip the two profiles
    python bench/report.py -- -k record # anything after -- goes to pytest

Each run is ``python -m pytest bench --benchmark-enable --benchmark-only
--benchmark-json=FILE`` (the first with the full million-frame memory
flood, later ones with ``--memory-frames 10000``); then ``python -m
bench.wire``, ``python -m bench.breakdown`` and ``python -m
bench.exchange_profile`` run once.  The section between the
``results:start`` and ``results:end`` markers is replaced by tables built
from their output, and the chart of the ratios (bench/chart.py: a PNG with
matplotlib if it is installed, else an SVG drawn without any dependency)
is written next to the README.

This module is also the one place that says which ratios are computed and
what their targets are: ``bench/conftest.py`` imports :data:`RATIOS` and the
table builders to print the same table at the end of a pytest run.  Ratios
are always of two timings from the *same* run (the floor moves with the
machine's mood, and the ratio partly cancels that out): of the medians, as
the targets are defined, and of the minimums, as a check.  With several
runs, the table shows the median ratio and the range over the runs.

Only the standard library is imported at module level, so the script runs
before anything of ours is importable (bench/chart.py, imported when the
chart is drawn, needs nothing else either).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import platform
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

BENCH_DIR: Final = Path(__file__).resolve().parent
ROOT: Final = BENCH_DIR.parent
README: Final = BENCH_DIR / "README.md"
START_MARKER: Final = "<!-- results:start -->"
END_MARKER: Final = "<!-- results:end -->"

#: Plaintext sizes for the per-record benchmarks: a short command, a status
#: reply, and close to the largest record (MAX_PLAINTEXT_LEN is 243).
SIZES: Final = (16, 64, 200)


@dataclass(frozen=True)
class Ratio:
    """``median(numerator) / median(denominator)``, both benchmark names."""

    label: str
    numerator: str
    denominator: str
    #: The most this ratio should be; ``None`` for a comparison with no target.
    target: float | None


def _ratios() -> tuple[Ratio, ...]:
    rows = [
        Ratio(
            f"seal+open {size} B / floor seal+open",
            f"test_seal_open[{size}-pumpguard]",
            f"test_seal_open[{size}-floor]",
            1.5,
        )
        for size in SIZES
    ]
    for kind, target in (("garbage", 1.0), ("replay", 1.0), ("bad-tag", 1.3)):
        rows.extend(
            Ratio(
                f"refuse {kind} {size} B / one raw open",
                f"test_refuse[{size}-{kind}]",
                f"test_refuse[{size}-raw-open]",
                target,
            )
            for size in SIZES
        )
    rows.extend(
        Ratio(
            f"raw AEAD refusing a bad tag {size} B / one raw open",
            f"test_refuse[{size}-raw-bad-tag]",
            f"test_refuse[{size}-raw-open]",
            None,
        )
        for size in SIZES
    )
    rows.extend(
        Ratio(
            f"refuse bad-tag {size} B / raw AEAD refusing a bad tag",
            f"test_refuse[{size}-bad-tag]",
            f"test_refuse[{size}-raw-bad-tag]",
            None,
        )
        for size in SIZES
    )
    rows += [
        Ratio(
            "handshake: pumpguard / Noise KK",
            "test_handshake[pumpguard]",
            "test_handshake[noise-kk]",
            None,
        ),
        Ratio(
            "Noise transport 16 B / AES-GCM floor",
            "test_peer_record[noise]",
            "test_peer_record[gcm-floor]",
            None,
        ),
        Ratio(
            "OSCORE request 16 B / pumpguard seal+open",
            "test_peer_record[oscore-request]",
            "test_seal_open[16-pumpguard]",
            None,
        ),
        Ratio(
            "pairing, both sides / handshake, both sides",
            "test_pairing",
            "test_handshake[pumpguard]",
            None,
        ),
        # The firmware in one process (bench_exchange.py).
        Ratio(
            "bolus exchange with the firmware / OSCORE request+response",
            "test_exchange[bolus]",
            "test_peer_record[oscore-round-trip]",
            0.2,
        ),
        Ratio(
            "status exchange with the firmware / OSCORE request+response",
            "test_exchange[status]",
            "test_peer_record[oscore-round-trip]",
            None,
        ),
        Ratio(
            "bolus exchange / its 8 raw AEAD calls",
            "test_exchange[bolus]",
            "test_exchange[bolus-floor]",
            None,
        ),
        Ratio(
            "status exchange / its 4 raw AEAD calls",
            "test_exchange[status]",
            "test_exchange[status-floor]",
            None,
        ),
        Ratio(
            "bolus exchange, flash image file (fsync) / in-memory flash",
            "test_exchange[bolus-file-flash]",
            "test_exchange[bolus]",
            None,
        ),
    ]
    pump_targets: tuple[tuple[str, float | None], ...] = (
        ("garbage", 1.0),
        ("replay", 1.0),
        ("bad-tag", 1.3),
        ("bad-crc", None),
    )
    for kind, pump_target in pump_targets:
        rows.extend(
            Ratio(
                f"pump refuses {kind} {size} B / one raw open",
                f"test_pump_refuse[{size}-{kind}]",
                f"test_pump_refuse[{size}-raw-open]",
                pump_target,
            )
            for size in SIZES
        )
    rows += [
        Ratio(
            "status round trip over ptys: pumpsim / bare echo",
            "test_pty_round_trip[pumpsim-status]",
            "test_pty_round_trip[echo]",
            2.0,
        ),
        Ratio(
            "status round trip over ptys: pumpsim / echo via the pump's UART driver",
            "test_pty_round_trip[pumpsim-status]",
            "test_pty_round_trip[echo-uart]",
            None,
        ),
        Ratio(
            "echo via the pump's UART driver / bare echo",
            "test_pty_round_trip[echo-uart]",
            "test_pty_round_trip[echo]",
            None,
        ),
    ]
    return tuple(rows)


#: Every ratio printed, in order.  Missing benchmarks (skipped, deselected)
#: leave their rows out.
RATIOS: Final = _ratios()


@dataclass(frozen=True)
class Timing:
    """pytest-benchmark's median and minimum for one benchmark, in seconds."""

    median: float
    min: float


#: One run: benchmark name -> its timing.
Timings = Mapping[str, Timing]


def _spread(values: Sequence[float], fmt: str, unit: str = "") -> str:
    middle = format(statistics.median(values), fmt) + unit
    if len(values) == 1:
        return middle
    return f"{middle} ({format(min(values), fmt)}..{format(max(values), fmt)})"


def _verdict(value: float, target: float | None) -> str:
    if target is None:
        return "—"
    if value <= target:
        return "met"
    excess = value / target - 1
    return f"missed by {excess:.0%}" if excess >= 0.095 else f"missed by {excess:.1%}"


@dataclass(frozen=True)
class RatioValues:
    """One ratio computed in each run that has both of its benchmarks."""

    ratio: Ratio
    #: Ratio of the medians, and of the minimums, one value per run.
    medians: list[float]
    minimums: list[float]

    @property
    def median(self) -> float:
        """The median over runs of the ratio of medians: what the verdict uses."""
        return statistics.median(self.medians)


def ratio_values(runs: Sequence[Timings]) -> list[RatioValues]:
    """Every ratio of :data:`RATIOS` computable from ``runs``, in order."""
    values = []
    for ratio in RATIOS:
        pairs = [
            (run[ratio.numerator], run[ratio.denominator])
            for run in runs
            if ratio.numerator in run and ratio.denominator in run
        ]
        if pairs:
            values.append(
                RatioValues(
                    ratio,
                    [top.median / bottom.median for top, bottom in pairs],
                    [top.min / bottom.min for top, bottom in pairs],
                )
            )
    return values


def verdict(value: float, target: float | None) -> str:
    """ "met", "missed by N%", or "—" for a comparison without a target."""
    return _verdict(value, target)


def ratio_table(runs: Sequence[Timings]) -> list[str]:
    """Markdown lines of every ratio computable from ``runs``; empty if none.

    Each ratio is taken within one run; with several runs a cell reads
    ``median (min..max)`` over the runs.  The verdict uses the ratio of
    medians, as the targets are defined; the ratio of minimums is printed
    beside it because on a VM that is sometimes slowed down, the fastest
    round of each benchmark is the one least disturbed.
    """
    lines = [
        "| ratio | of medians | of minimums | target | verdict |",
        "|---|---|---|---|---|",
    ]
    for value in ratio_values(runs):
        ratio = value.ratio
        target = "—" if ratio.target is None else f"<= {ratio.target:.1f}x"
        lines.append(
            f"| {ratio.label} | {_spread(value.medians, '.2f', 'x')} | "
            f"{_spread(value.minimums, '.2f', 'x')} | "
            f"{target} | {_verdict(value.median, ratio.target)} |"
        )
    return lines if len(lines) > 2 else []


def timing_table(runs: Sequence[Timings], groups: Mapping[str, str]) -> list[str]:
    """Markdown lines: each benchmark's median and minimum in µs, over ``runs``."""
    lines = ["| group | benchmark | median µs | min µs |", "|---|---|---|---|"]
    for name, group in groups.items():
        timings = [run[name] for run in runs if name in run]
        if timings:
            medians = _spread([timing.median * 1e6 for timing in timings], ".2f")
            minimums = _spread([timing.min * 1e6 for timing in timings], ".2f")
            lines.append(f"| {group} | `{name}` | {medians} | {minimums} |")
    return lines


def memory_table(result: Mapping[str, object]) -> list[str]:
    """Markdown lines for one bench/memory_probe.py result."""

    def number(key: str) -> float:
        value = result.get(key)
        return float(value) if isinstance(value, int | float) else float("nan")

    growth = number("rss_growth")
    sites = result.get("traced_growing_sites")
    sites_text = "; ".join(map(str, sites)) if isinstance(sites, list) and sites else "none"
    kinds = result.get("kinds")
    kinds_text = ", ".join(map(str, kinds)) if isinstance(kinds, list) else "?"
    return [
        "| measure | value |",
        "|---|---|",
        f"| refused frames (kinds: {kinds_text}) | {int(number('frames')):,} |",
        f"| CPU time per refused frame, mixed kinds | {number('us_per_frame'):.2f} us |",
        f"| pump clock covered (115200-baud wire time) | {number('pump_seconds') / 60:.0f} min |",
        f"| resident set before / after | {number('rss_before') / 2**20:.2f} MiB / "
        f"{number('rss_after') / 2**20:.2f} MiB |",
        f"| resident set growth (target < 1 MiB) | {growth / 1024:+.0f} KiB "
        f"({'met' if growth < 2**20 else 'MISSED'}) |",
        f"| Python heap growth over {int(number('traced_frames')):,} more frames (tracemalloc) "
        f"| {number('traced_growth'):+.0f} B |",
        f"| biggest growing allocation sites | {sites_text} |",
        f"| audit entries written during the flood (all aggregated rejections) "
        f"| {int(number('audit_entries_written'))} |",
        f"| legitimate remote served throughout (status every 10,000 frames) "
        f"| {result.get('remote_served')} |",
    ]


def bytes_table(extra_info: Mapping[str, Mapping[str, object]]) -> list[str]:
    """Markdown lines for the benchmarks that recorded a ``wire_bytes`` note."""
    lines = ["| benchmark | bytes on the wire |", "|---|---|"]
    for name, info in extra_info.items():
        note = info.get("wire_bytes")
        if note is not None:
            lines.append(f"| `{name}` | {note} |")
    return lines if len(lines) > 2 else []


@dataclass
class _Run:
    timings: dict[str, Timing]
    groups: dict[str, str]
    extra_info: dict[str, dict[str, object]]
    machine: str


def _load(path: Path) -> _Run:
    data = json.loads(path.read_text(encoding="utf-8"))
    run = _Run(timings={}, groups={}, extra_info={}, machine="")
    for bench in data["benchmarks"]:
        name = str(bench["name"])
        stats = bench["stats"]
        run.timings[name] = Timing(median=float(stats["median"]), min=float(stats["min"]))
        run.groups[name] = str(bench.get("group") or "")
        run.extra_info[name] = dict(bench.get("extra_info") or {})
    cpu = data.get("machine_info", {}).get("cpu", {})
    run.machine = f"{cpu.get('brand_raw', 'unknown CPU')}, {cpu.get('count', '?')} cores"
    return run


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


@dataclass(frozen=True)
class Extras:
    """What the report shows besides the pytest runs: outputs of the helper modules."""

    wire: str = ""
    breakdown: str = ""
    exchange_profile: str = ""
    #: The chart's file name, relative to the README.
    chart: str = ""


def _memory_result(runs: Sequence[_Run]) -> tuple[str, Mapping[str, object]] | None:
    """The memory probe's result with the most frames, and its benchmark's name."""
    best: tuple[str, Mapping[str, object]] | None = None
    for run in runs:
        for name, info in run.extra_info.items():
            result = info.get("memory")
            if not isinstance(result, dict):
                continue
            frames = result.get("frames")
            if not isinstance(frames, int):
                continue
            if best is None or frames > int(str(best[1].get("frames", 0))):
                best = (name, result)
    return best


def build_section(runs: Sequence[_Run], extras: Extras) -> str:
    """The text that goes between the markers."""
    first = runs[0]
    versions = ", ".join(
        f"{dist} {_version(dist)}"
        for dist in ("cryptography", "pytest-benchmark", "noiseprotocol", "aiocoap", "matplotlib")
    )
    timings = [run.timings for run in runs]
    memory = _memory_result(runs)
    # The memory flood is timed whole (start-up included) and not the same
    # size in every run: it has its own table, not a timing row.
    groups = {
        name: group
        for name, group in first.groups.items()
        if "memory" not in first.extra_info.get(name, {})
    }
    lines = [
        f"Generated by `python bench/report.py` on "
        f"{datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}: {len(runs)} run(s) on "
        f"{first.machine}, Python {platform.python_version()}, {versions}.",
        "",
        "A cell with a range reads *median over runs (lowest..highest run)*.",
        "",
        "#### Ratios (each computed within one run)",
        "",
    ]
    if extras.chart:
        lines += [f"![The ratios, on a log scale]({extras.chart})", ""]
    lines += [
        *ratio_table(timings),
        "",
        "#### Timings (pytest-benchmark median and min of each run)",
        "",
        *timing_table(timings, groups),
    ]
    wire = bytes_table(first.extra_info)
    if wire:
        lines += ["", "#### Bytes on the wire, per benchmark", "", *wire]
    if extras.wire:
        lines += ["", "#### Bytes on the wire, per message (`python -m bench.wire`)", ""]
        lines += [extras.wire.strip()]
    if memory is not None:
        lines += ["", f"#### Memory under a refused-frame flood (`{memory[0]}`)", ""]
        lines += memory_table(memory[1])
    if extras.exchange_profile:
        lines += ["", "#### What an exchange is made of (`python -m bench.exchange_profile`)", ""]
        lines += [extras.exchange_profile.strip()]
    if extras.breakdown:
        lines += ["", "#### Breakdown of one record (`python -m bench.breakdown`)", ""]
        lines += [extras.breakdown.strip()]
    return "\n".join(lines)


def draw_chart(runs: Sequence[_Run], directory: Path) -> Path:
    """The chart of every ratio of ``runs``, written into ``directory``."""
    if str(ROOT) not in sys.path:  # run as a script: make bench importable
        sys.path.insert(0, str(ROOT))
    from bench import chart

    rows = [
        chart.ChartRow(
            value.ratio.label,
            value.median,
            min(value.medians),
            max(value.medians),
            value.ratio.target,
        )
        for value in ratio_values([run.timings for run in runs])
    ]
    title = f"pumpguard benchmarks: ratios of medians, {len(runs)} run(s)"
    return chart.draw(rows, directory, title=title)


def replace_section(text: str, section: str) -> str:
    """``text`` with everything between the two markers replaced by ``section``.

    Raises:
        ValueError: a marker is missing, or they are out of order.
    """
    start = text.find(START_MARKER)
    end = text.find(END_MARKER)
    if start < 0 or end < start:
        raise ValueError(f"need {START_MARKER} followed by {END_MARKER}")
    head = text[: start + len(START_MARKER)]
    return f"{head}\n{section}\n{text[end:]}"


def _run(command: Sequence[str], *, capture: bool = False) -> str:
    print("$", " ".join(["python", *command[1:]]), flush=True)
    # The command is built here from fixed strings and our own arguments.
    completed = subprocess.run(  # noqa: S603
        command, cwd=ROOT, check=False, capture_output=capture, text=True
    )
    if completed.returncode != 0:
        if capture:
            print(completed.stdout, completed.stderr, sep="\n", file=sys.stderr)
        raise SystemExit(f"exit status {completed.returncode}; README left unchanged")
    return completed.stdout if capture else ""


#: Refused frames of the memory flood in the runs after the first (the
#: first sends the full million; the report shows the run with the most).
LATER_RUN_MEMORY_FRAMES: Final = 10_000


def _run_pytest(json_path: Path, pytest_args: Sequence[str], *, full_memory: bool) -> None:
    memory = [] if full_memory else [f"--memory-frames={LATER_RUN_MEMORY_FRAMES}"]
    _run(
        [
            sys.executable,
            "-m",
            "pytest",
            "bench",
            "--benchmark-enable",
            "--benchmark-only",
            f"--benchmark-json={json_path}",
            "-p",
            "no:cacheprovider",
            *memory,
            *pytest_args,
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=3, help="benchmark runs (default 3)")
    parser.add_argument("--readme", type=Path, default=README, help="file to rewrite")
    parser.add_argument(
        "--dry-run", action="store_true", help="print the section instead of writing it"
    )
    parser.add_argument(
        "--no-breakdown",
        action="store_true",
        help="skip python -m bench.breakdown and python -m bench.exchange_profile",
    )
    parser.add_argument("--no-chart", action="store_true", help="leave the chart file as it is")
    parser.add_argument("pytest_args", nargs="*", help="passed to pytest (after --)")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    readme: Path = args.readme
    original = readme.read_text(encoding="utf-8")
    try:
        replace_section(original, "")  # fail on missing markers before spending minutes
    except ValueError as exc:
        parser.error(f"{readme}: {exc}")

    runs = []
    with tempfile.TemporaryDirectory(prefix="pumpguard-bench-") as tmp:
        for index in range(args.runs):
            path = Path(tmp) / f"run{index}.json"
            _run_pytest(path, args.pytest_args, full_memory=index == 0)
            runs.append(_load(path))

    def module(name: str) -> str:
        return _run([sys.executable, "-m", name], capture=True)

    chart = ""
    if args.no_chart or args.dry_run:
        existing = [
            p for p in (readme.parent / "ratios.png", readme.parent / "ratios.svg") if p.exists()
        ]
        chart = existing[0].name if existing else ""
    elif ratio_values([run.timings for run in runs]):
        chart_path = draw_chart(runs, readme.parent)
        chart = chart_path.name
        print(f"wrote {chart_path}")
    extras = Extras(
        wire=module("bench.wire"),
        breakdown="" if args.no_breakdown else module("bench.breakdown"),
        exchange_profile="" if args.no_breakdown else module("bench.exchange_profile"),
        chart=chart,
    )
    section = build_section(runs, extras)
    if args.dry_run:
        print(section)
    else:
        readme.write_text(replace_section(original, section), encoding="utf-8")
        print(f"rewrote the results section of {readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
