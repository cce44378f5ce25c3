"""Run the benchmarks and rewrite the results section of bench/README.md.

Usage, from anywhere::

    python bench/report.py              # 3 runs, rewrite bench/README.md
    python bench/report.py --runs 1     # quicker, no spread
    python bench/report.py --dry-run    # print the section, change nothing
    python bench/report.py --no-breakdown   # skip python -m bench.breakdown
    python bench/report.py -- -k record # anything after -- goes to pytest

Each run is ``python -m pytest bench --benchmark-enable --benchmark-only
--benchmark-json=FILE``; then ``python -m bench.breakdown`` runs once.  The
section between the ``results:start`` and ``results:end`` markers is
replaced by tables built from their output.

This module is also the one place that says which ratios are computed and
what their targets are: ``bench/conftest.py`` imports :data:`RATIOS` and the
table builders to print the same table at the end of a pytest run.  Ratios
are always of two timings from the *same* run (the floor moves with the
machine's mood, and the ratio partly cancels that out): of the medians, as
the targets are defined, and of the minimums, as a check.  With several
runs, the table shows the median ratio and the range over the runs.

Only the standard library is imported, so the script runs before anything
of ours is importable.
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
    return "met" if value <= target else f"missed by {value / target - 1:.0%}"


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
    for ratio in RATIOS:
        pairs = [
            (run[ratio.numerator], run[ratio.denominator])
            for run in runs
            if ratio.numerator in run and ratio.denominator in run
        ]
        if not pairs:
            continue
        medians = [top.median / bottom.median for top, bottom in pairs]
        minimums = [top.min / bottom.min for top, bottom in pairs]
        target = "—" if ratio.target is None else f"<= {ratio.target:.1f}x"
        lines.append(
            f"| {ratio.label} | {_spread(medians, '.2f', 'x')} | {_spread(minimums, '.2f', 'x')} | "
            f"{target} | {_verdict(statistics.median(medians), ratio.target)} |"
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


def build_section(runs: Sequence[_Run], breakdown: str) -> str:
    """The text that goes between the markers."""
    first = runs[0]
    versions = ", ".join(
        f"{dist} {_version(dist)}"
        for dist in ("cryptography", "pytest-benchmark", "noiseprotocol", "aiocoap")
    )
    timings = [run.timings for run in runs]
    lines = [
        f"Generated by `python bench/report.py` on "
        f"{datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}: {len(runs)} run(s) on "
        f"{first.machine}, Python {platform.python_version()}, {versions}.",
        "",
        "A cell with a range reads *median over runs (lowest..highest run)*.",
        "",
        "#### Ratios (each computed within one run)",
        "",
        *ratio_table(timings),
        "",
        "#### Timings (pytest-benchmark median and min of each run)",
        "",
        *timing_table(timings, first.groups),
    ]
    wire = bytes_table(first.extra_info)
    if wire:
        lines += ["", "#### Bytes on the wire", "", *wire]
    if breakdown:
        lines += ["", "#### Breakdown (`python -m bench.breakdown`)", "", breakdown.strip()]
    return "\n".join(lines)


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


def _run_pytest(json_path: Path, pytest_args: Sequence[str]) -> None:
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
        "--no-breakdown", action="store_true", help="skip python -m bench.breakdown"
    )
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
            _run_pytest(path, args.pytest_args)
            runs.append(_load(path))
    breakdown = (
        "" if args.no_breakdown else _run([sys.executable, "-m", "bench.breakdown"], capture=True)
    )
    section = build_section(runs, breakdown)
    if args.dry_run:
        print(section)
    else:
        readme.write_text(replace_section(original, section), encoding="utf-8")
        print(f"rewrote the results section of {readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
