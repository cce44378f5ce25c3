"""Shared fixtures for the benchmarks, and the ratio table printed at the end.

With benchmarks disabled (the default ``addopts``), every benchmark body
runs once as a smoke test and no timing exists: the summary then prints the
bytes-on-the-wire table only and says why there are no ratios.  Timings are
never asserted; see bench/README.md.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from bench.parties import Pairing, make_pairing, make_sessions
from bench.report import Timing, bytes_table, ratio_table
from protocol import SecureSession


@dataclass
class _Collected:
    timings: dict[str, Timing] = field(default_factory=dict)
    extra_info: dict[str, dict[str, object]] = field(default_factory=dict)


_COLLECTED = pytest.StashKey[_Collected]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_COLLECTED] = _Collected()


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
