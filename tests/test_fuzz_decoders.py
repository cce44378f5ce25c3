"""The decoder fuzz harness, bounded, in every test run (S9; SPEC §10.1).

``tests/fuzz_decoders.py`` is an atheris harness for long coverage-guided runs
(its docstring says how).  Here its unguided self-test feeds each decoder
10,000 seeded random and mutated inputs -- the same ones on every run, about
two seconds in all -- and fails on any exception the decoder does not
document or any broken invariant (one byte form, bounded buffer, no state
change on refusal, no replay).
"""

from __future__ import annotations

import fuzz_decoders
import pytest

INPUTS_PER_DECODER = 10_000


@pytest.mark.parametrize(
    "target", fuzz_decoders.TARGETS, ids=[target.__name__ for target in fuzz_decoders.TARGETS]
)
def test_each_decoder_survives_10k_inputs_and_reaches_its_accept_path(
    target: fuzz_decoders.Target,
) -> None:
    """The decoder ran its inputs with only documented refusals, and accepted at
    least its valid seed, so the checks on accepted input ran too."""
    accepted = fuzz_decoders.self_test(INPUTS_PER_DECODER, seed=0, only=target)
    assert list(accepted) == [target.__name__]
    assert accepted[target.__name__] >= 1


def test_the_harness_reports_an_undocumented_exception(monkeypatch: pytest.MonkeyPatch) -> None:
    """The self-test can fail: a decoder raising anything undocumented stops it."""

    def broken(data: bytes) -> object:
        raise KeyError("not a documented refusal")

    monkeypatch.setattr(fuzz_decoders, "decode_message", broken)
    with pytest.raises(KeyError):
        fuzz_decoders.self_test(10, only=fuzz_decoders.fuzz_decode_message)


def test_one_input_dispatches_on_the_first_byte(monkeypatch: pytest.MonkeyPatch) -> None:
    """libFuzzer's entry point: byte 0 modulo the number of targets picks one, the
    rest is its input; an empty input is ignored."""
    seen: list[tuple[int, bytes]] = []
    count = len(fuzz_decoders.TARGETS)

    def recorder(index: int) -> fuzz_decoders.Target:
        def record(data: bytes) -> bool:
            seen.append((index, data))
            return False

        return record

    monkeypatch.setattr(fuzz_decoders, "TARGETS", tuple(recorder(i) for i in range(count)))
    for first in range(2 * count):
        fuzz_decoders.one_input(bytes([first]) + b"rest")
    fuzz_decoders.one_input(b"")
    assert seen == [(first % count, b"rest") for first in range(2 * count)]
