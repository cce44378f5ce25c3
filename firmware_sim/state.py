"""The pump's persistent state and its byte form (SPEC §13.2).

Everything the pump must remember across power loss that changes only on a
command or a front-panel action lives in one :class:`PersistentState`,
committed atomically as one snapshot (firmware_sim.store).  What changes on
every motor pulse is the delivery engine's own snapshot
(``DeliveryEngine.snapshot``), committed to a second, smaller store so a pulse
does not rewrite the whole state.

The state is a deterministic CBOR array; :func:`decode_state` refuses anything
else with :class:`StateInvalid`, and the firmware then enters its safe state
(remote bolus off, alarm) instead of falling back to defaults (S8).

CDDL::

    persistent-state = [
        format: 1,
        pump-static: bstr .size 32,        ; X25519 private key
        audit-key: bstr .size 32,          ; Ed25519 private key seed
        remotes: [* bstr .size 32],        ; paired remotes' static public keys, <= MAX_REMOTES
        remote-bolus-enabled: bool,
        prescriber: bstr .size 32 / null,  ; enrolled Ed25519 public key
        policy: [version, max-bolus, max-1h, max-24h],
        outcomes: [* outcome-record],      ; newest last, <= OUTCOME_CAPACITY
        ledger: [* [age-ms: uint, pulses: uint]],
        pairing-failures: uint,
        boot-count: uint,
    ]
    outcome-record = [command-id: bstr .size 16, requested: uint, outcome: uint, delivered: uint]
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Final

import cbor2

from pumpguard.protocol import LimitPolicy, Outcome, wire

FORMAT: Final = 1
#: Outcomes kept for retries: the host's whole retry horizon (S7).
OUTCOME_CAPACITY: Final = 64


class StateInvalid(Exception):
    """Stored bytes that do not decode to a valid state."""


@dataclass(frozen=True)
class OutcomeRecord:
    command_id: bytes
    requested: int
    outcome: Outcome
    delivered: int


@dataclass(frozen=True, repr=False)
class PersistentState:
    pump_static: bytes
    audit_key: bytes
    remotes: tuple[bytes, ...] = ()
    remote_bolus_enabled: bool = False
    prescriber: bytes | None = None
    policy: LimitPolicy = field(default_factory=LimitPolicy.factory)
    outcomes: tuple[OutcomeRecord, ...] = ()
    ledger: tuple[tuple[int, int], ...] = ()
    pairing_failures: int = 0
    boot_count: int = 0

    def __repr__(self) -> str:  # never print key material
        return (
            f"PersistentState(remotes={len(self.remotes)}, "
            f"remote_bolus={self.remote_bolus_enabled}, policy=v{self.policy.version})"
        )

    def outcome(self, command_id: bytes) -> OutcomeRecord | None:
        for record in self.outcomes:
            if record.command_id == command_id:
                return record
        return None

    def with_outcome(self, record: OutcomeRecord) -> PersistentState:
        """Insert or replace ``record``; the oldest settled record goes when full."""
        kept = [r for r in self.outcomes if r.command_id != record.command_id]
        kept.append(record)
        while len(kept) > OUTCOME_CAPACITY:
            # Never evict an in-progress record; there is at most one.
            victim = next(i for i, r in enumerate(kept) if r.outcome is not Outcome.IN_PROGRESS)
            del kept[victim]
        return replace(self, outcomes=tuple(kept))


def encode_state(state: PersistentState) -> bytes:
    policy = state.policy
    return cbor2.dumps(
        [
            FORMAT,
            state.pump_static,
            state.audit_key,
            list(state.remotes),
            state.remote_bolus_enabled,
            state.prescriber,
            [policy.version, policy.max_bolus_pulses, policy.max_1h_pulses, policy.max_24h_pulses],
            [[r.command_id, r.requested, int(r.outcome), r.delivered] for r in state.outcomes],
            [list(entry) for entry in state.ledger],
            state.pairing_failures,
            state.boot_count,
        ],
        canonical=True,
    )


def decode_state(data: bytes) -> PersistentState:
    """Parse a snapshot.  Raises only :class:`StateInvalid`."""
    try:
        items = cbor2.loads(data)
        if not isinstance(items, list) or len(items) != 11 or items[0] != FORMAT:
            raise StateInvalid("unknown state format")
        (_, static, audit_key, remotes, enabled, prescriber, policy, outcomes, ledger,
         failures, boots) = items  # fmt: skip
        _need(
            _is_bytes(static, wire.X25519_KEY_LEN) and _is_bytes(audit_key, wire.ED25519_SEED_LEN),
            "keys",
        )
        _need(
            isinstance(remotes, list)
            and len(remotes) <= wire.MAX_REMOTES
            and all(_is_bytes(r, wire.X25519_KEY_LEN) for r in remotes),
            "remotes",
        )
        _need(type(enabled) is bool, "remote-bolus flag")
        _need(prescriber is None or _is_bytes(prescriber, wire.ED25519_PUBLIC_LEN), "prescriber")
        _need(isinstance(policy, list) and len(policy) == 4 and all(_is_uint(v) for v in policy),
              "policy")  # fmt: skip
        limit_policy = LimitPolicy(*policy)
        limit_policy.check_bounds()
        _need(isinstance(outcomes, list) and len(outcomes) <= OUTCOME_CAPACITY, "outcomes")
        records = []
        for entry in outcomes:
            _need(
                isinstance(entry, list)
                and len(entry) == 4
                and _is_bytes(entry[0], wire.COMMAND_ID_LEN)
                and all(_is_uint(v) for v in entry[1:])
                and entry[2] in Outcome._value2member_map_,
                "outcome record",
            )
            records.append(OutcomeRecord(entry[0], entry[1], Outcome(entry[2]), entry[3]))
        _need(
            isinstance(ledger, list)
            and all(
                isinstance(e, list) and len(e) == 2 and all(_is_uint(v) for v in e) for e in ledger
            ),
            "ledger",
        )
        _need(_is_uint(failures) and _is_uint(boots), "counters")
    except StateInvalid:
        raise
    except Exception as exc:  # any decoding problem means the same: do not trust it
        raise StateInvalid(f"undecodable state ({type(exc).__name__})") from None
    return PersistentState(
        pump_static=static,
        audit_key=audit_key,
        remotes=tuple(remotes),
        remote_bolus_enabled=enabled,
        prescriber=prescriber,
        policy=limit_policy,
        outcomes=tuple(records),
        ledger=tuple((e[0], e[1]) for e in ledger),
        pairing_failures=failures,
        boot_count=boots,
    )


def _need(condition: bool, what: str) -> None:
    if not condition:
        raise StateInvalid(f"invalid {what}")


def _is_bytes(value: object, length: int) -> bool:
    return type(value) is bytes and len(value) == length


def _is_uint(value: object) -> bool:
    return type(value) is int and 0 <= value <= wire.UINT64_MAX
