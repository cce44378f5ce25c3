"""Shared fixtures for the benchmarks, and the tables printed at the end.

With benchmarks disabled (the default ``addopts``), every benchmark body
runs once as a smoke test and no timing exists: the summary then prints the
bytes-on-the-wire tables (and any other table a test handed to
:func:`summary_table`) and says why there are no ratios.  Timings are never
asserted; see bench/README.md.

``--memory-frames N`` sets how many refused frames bench_memory.py pushes
through the pump: by default 10,000 when benchmarks are disabled (smoke)
and 1,000,000 when they are enabled.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from bench.firmware import PumpParty
from bench.parties import Pairing, make_pairing, make_sessions
from bench.report import Timing, bytes_table, ratio_table
from pumpguard.protocol import SecureSession


@dataclass
class _Collected:
    timings: dict[str, Timing] = field(default_factory=dict)
    extra_info: dict[str, dict[str, object]] = field(default_factory=dict)
    #: Title -> markdown lines, printed in the summary in the order added.
    tables: dict[str, list[str]] = field(default_factory=dict)


_COLLECTED = pytest.StashKey[_Collected]()

#: Adds a titled markdown table to the end-of-run summary.
SummaryTable = Callable[[str, Sequence[str]], None]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--memory-frames",
        type=int,
        default=None,
        help="refused frames bench_memory.py sends through the pump "
        "(default 10,000 with benchmarks disabled, 1,000,000 enabled)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_COLLECTED] = _Collected()


@pytest.fixture
def summary_table(request: pytest.FixtureRequest) -> SummaryTable:
    """``summary_table(title, lines)``: print ``lines`` under ``title`` after the run."""
    collected = request.config.stash[_COLLECTED]

    def add(title: str, lines: Sequence[str]) -> None:
        collected.tables[title] = list(lines)

    return add


@pytest.fixture(autouse=True)
def _collect_benchmark(request: pytest.FixtureRequest) -> Iterator[None]:
    """Keep each benchmark's timing (if it was timed) and its extra_info.

    The fixture object is fetched at set-up, so it is still at hand after the
    test although pytest-benchmark has finalised it by then.
    """
    if "benchmark" not in request.fixturenames:
        yield
        return
    bench: BenchmarkFixture = request.getfixturevalue("benchmark")
    yield
    collected = request.config.stash[_COLLECTED]
    if bench.extra_info:
        collected.extra_info[bench.name] = dict(bench.extra_info)
    if bench.stats is not None and not bench.has_error:
        stats = bench.stats.stats
        collected.timings[bench.name] = Timing(median=float(stats.median), min=float(stats.min))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    collected = terminalreporter.config.stash.get(_COLLECTED, None)
    if collected is None:
        return
    wire = bytes_table(collected.extra_info)
    if wire:
        terminalreporter.write_sep("-", "pumpguard: bytes on the wire")
        for line in wire:
            terminalreporter.write_line(line)
    for title, lines in collected.tables.items():
        terminalreporter.write_sep("-", f"pumpguard: {title}")
        for line in lines:
            terminalreporter.write_line(line)
    if not collected.extra_info and not collected.timings:
        return
    terminalreporter.write_sep("-", "pumpguard: ratios (same run)")
    ratios = ratio_table([collected.timings])
    if not ratios:
        terminalreporter.write_line(
            "no timings (benchmarks disabled, or their pairs not run): "
            "use --benchmark-enable --benchmark-only for ratios"
        )
    for line in ratios:
        terminalreporter.write_line(line)


# --- Parties and sessions ---------------------------------------------------


@pytest.fixture
def pairing() -> Pairing:
    return make_pairing()


@pytest.fixture
def sessions(pairing: Pairing) -> tuple[SecureSession, SecureSession]:
    """``(remote, pump)`` sessions from a real handshake."""
    return make_sessions(pairing)


@pytest.fixture
def pump_party() -> Iterator[PumpParty]:
    """The real firmware on in-memory flash, paired, with a live session."""
    party = PumpParty()
    yield party
    party.close()
