"""Pairing, both sides: the six records of SPEC §9 and their bytes.

``test_pairing`` times a complete pairing in one process, as
``test_handshake[pumpguard]`` (bench_handshake.py) times a session
handshake: the remote's :class:`PairingInitiator` and the pump's
:class:`PairingResponder`, from the PAIR_REQUEST to the PAIR_PUMP_CONFIRM,
with both users' confirmations taken as given.  What a pairing costs on top
on the pump (one state commit, one audit entry) and at the front panel is
not in it: that is the user's time, seconds, not microseconds.

Bytes per record are recorded as ``wire_bytes``: 33 + 65 + 17 + 17 + 17 + 17.
Pairing is rare (once per remote), so there is no floor and no target; it
is here so its cost is known next to the handshake's.
"""

from __future__ import annotations

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from bench.parties import Pairing
from pumpguard.protocol import (
    PairingInitiator,
    PairingResponder,
    PairingResult,
    x25519_public_bytes,
)

pytestmark = pytest.mark.benchmark(min_time=100e-6)

#: Record lengths in the order they are sent (SPEC §9.2).
PAIRING_RECORD_LENGTHS = (33, 65, 17, 17, 17, 17)


def test_pairing(benchmark: BenchmarkFixture, pairing: Pairing) -> None:
    benchmark.group = "handshake, both sides"

    def run() -> tuple[PairingResult, PairingResult, tuple[int, ...]]:
        remote = PairingInitiator(pairing.remote_static, pairing.random_bytes)
        pump = PairingResponder(pairing.pump_static, pairing.random_bytes)
        request = remote.start()
        commit = pump.receive_request(request)
        remote_nonce = remote.receive_commit(commit)
        pump_nonce, pump_code = pump.receive_remote_nonce(remote_nonce)
        remote_code = remote.receive_pump_nonce(pump_nonce)
        if remote_code != pump_code:
            raise AssertionError("the two screens show different codes")
        remote_confirm = remote.confirm()
        pump.receive_remote_confirm(remote_confirm)
        pump_result, pump_confirm = pump.user_confirmed()
        remote_result = remote.receive_pump_confirm(pump_confirm)
        lengths = tuple(
            len(record)
            for record in (request, commit, remote_nonce, pump_nonce, remote_confirm, pump_confirm)
        )
        return remote_result, pump_result, lengths

    remote_result, pump_result, lengths = benchmark(run)
    benchmark.extra_info["wire_bytes"] = (
        " + ".join(str(n) for n in lengths) + f" = {sum(lengths)} B (six records)"
    )
    assert lengths == PAIRING_RECORD_LENGTHS
    # Each side now holds the other's authenticated static key, and both showed one code.
    assert remote_result.peer_static == x25519_public_bytes(pairing.pump_static)
    assert pump_result.peer_static == x25519_public_bytes(pairing.remote_static)
    assert remote_result.code == pump_result.code
