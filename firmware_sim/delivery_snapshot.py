"""The delivery engine's durable form, and the rules for trusting it again.

``DeliveryEngine.snapshot()`` hands the pump a flat map of ints and bytes,
which the pump commits to the delivery store after every tick that pulsed
(SPEC §13.1, §13.3 "Each pulse").  At boot the map comes back from flash and
``DeliveryEngine.restore()`` reads it through :func:`decode_snapshot` and
:func:`reconcile` with the motor's witness (SPEC §13.3 "Boot", step 4).
:func:`encode_snapshot` and :func:`decode_snapshot` are a pair (STYLE §4), and
:func:`snapshot_to_bytes` and :func:`snapshot_from_bytes` are the one place
the map becomes the bytes in the delivery store and back.

The map holds no times: the monotonic clock restarts at boot.  What comes
back from flash is untrusted.  :func:`decode_snapshot` checks the key set,
the version, every field's type and range and the rules that tie fields
together (the schema below), and raises
:class:`~firmware_sim.delivery_events.DeliverySnapshotInvalid` for a map
that breaks any of them; the pump then enters its safe state instead of
starting from defaults (S8).

Pulses the motor's witness counted after the snapshot was taken (the
process died between a pulse and the next persist) are added to the ledger
by :func:`reconcile`: to the interrupted bolus first, up to what it asked
for, then to basal.  That may overstate the bolus by the few basal pulses of
one tick, but never understates what went in, so a user is never told to
re-dose for insulin they already have.  A witness that counted fewer pulses
than the ledger, or more than the reservoir held, belongs to another motor
or another snapshot: :class:`DeliverySnapshotInvalid`.

Schema (CDDL; the pump stores it as deterministic CBOR)::

    delivery-snapshot = {
        "v": 1,
        "state": 1..5,                  ; DeliveryState
        "reservoir": uint,              ; <= RESERVOIR_CAPACITY_PULSES; 0 exactly when EMPTY
        "basal_rate": uint,             ; pulses per hour, <= MAX_BASAL_PULSES_PER_HOUR
        "basal_delivered": uint,        ; the ledger: pulses over its life
        "bolus_delivered": uint,
        "basal_missed": uint,
        "low_alarmed": 0 / 1,
        "motor_base": uint,             ; the motor's count when the ledger was zero
        ; The bolus in progress, set exactly when "state" is BOLUS; otherwise
        ; each of the three is 0 or h''.
        "bolus_cmd_id": bstr .size 16,
        "bolus_requested": 1..ABSOLUTE_MAX_BOLUS_PULSES,
        "bolus_so_far": uint,           ; < bolus_requested, <= bolus_delivered
        ; How the most recent bolus ended; "last_reason" 0 means no bolus yet,
        ; and then each of the other three is 0 or h''.
        "last_reason": 0..6,            ; StopReason
        "last_cmd_id": bstr .size 16,
        "last_requested": 1..ABSOLUTE_MAX_BOLUS_PULSES,
        "last_delivered": uint,         ; <= last_requested; equal if COMPLETED
    }
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Final

import cbor2

from pumpguard.protocol import wire

from . import config
from .delivery_events import ActiveBolus, BolusEnded, DeliverySnapshotInvalid, StopReason
from .delivery_states import DeliveryState

__all__ = ["DeliverySnapshot", "decode_snapshot", "encode_snapshot", "reconcile"]

_VERSION: Final = 1
_KEYS: Final = frozenset(
    {
        "v",
        "state",
        "reservoir",
        "basal_rate",
        "basal_delivered",
        "bolus_delivered",
        "basal_missed",
        "low_alarmed",
        "motor_base",
        "bolus_cmd_id",
        "bolus_requested",
        "bolus_so_far",
        "last_cmd_id",
        "last_requested",
        "last_delivered",
        "last_reason",
    }
)


@dataclass(frozen=True, slots=True)
class DeliverySnapshot:
    """What the engine persists (no times); :func:`reconcile` returns the
    same shape for the ledger at boot."""

    state: DeliveryState
    reservoir: int
    basal_rate: int
    basal_delivered: int
    bolus_delivered: int
    basal_missed: int
    low_alarmed: bool
    motor_base: int
    #: The bolus in progress (exactly when ``state`` is BOLUS).
    bolus: ActiveBolus | None
    #: How the most recent bolus ended, if any bolus ever ran.
    last_bolus: BolusEnded | None


def encode_snapshot(snapshot: DeliverySnapshot) -> dict[str, int | bytes]:
    """The flat map of ints and bytes that is stored (module docstring)."""
    b = snapshot.bolus
    last = snapshot.last_bolus
    return {
        "v": _VERSION,
        "state": snapshot.state.value,
        "reservoir": snapshot.reservoir,
        "basal_rate": snapshot.basal_rate,
        "basal_delivered": snapshot.basal_delivered,
        "bolus_delivered": snapshot.bolus_delivered,
        "basal_missed": snapshot.basal_missed,
        "low_alarmed": int(snapshot.low_alarmed),
        "motor_base": snapshot.motor_base,
        "bolus_cmd_id": b"" if b is None else b.cmd_id,
        "bolus_requested": 0 if b is None else b.requested,
        "bolus_so_far": 0 if b is None else b.delivered,
        "last_cmd_id": b"" if last is None else last.cmd_id,
        "last_requested": 0 if last is None else last.requested,
        "last_delivered": 0 if last is None else last.delivered,
        "last_reason": 0 if last is None else last.reason.value,
    }


def snapshot_to_bytes(snapshot: Mapping[str, int | bytes]) -> bytes:
    """The stored form of :meth:`DeliveryEngine.snapshot`'s map: deterministic CBOR."""
    return cbor2.dumps(dict(snapshot), canonical=True)


def snapshot_from_bytes(raw: bytes) -> dict[str, object]:
    """The map back from the delivery store, not yet checked (:func:`decode_snapshot` checks).

    Raises:
        DeliverySnapshotInvalid: the bytes are not one CBOR map.
    """
    try:
        loaded = cbor2.loads(raw)
    except Exception:  # any decoding problem means the same: do not trust it
        raise DeliverySnapshotInvalid("delivery snapshot is not CBOR") from None
    if not isinstance(loaded, dict):
        raise DeliverySnapshotInvalid("delivery snapshot is not a map")
    return loaded


def decode_snapshot(raw: Mapping[str, object]) -> DeliverySnapshot:
    """Read back a map :func:`encode_snapshot` made, checking every field.

    Raises:
        DeliverySnapshotInvalid: not a map, keys or version differ, a field
            has the wrong type or range, or fields disagree with each other.
    """
    s = _SnapshotReader(raw)
    state = DeliveryState(s.integer("state", 1, len(DeliveryState)))
    reservoir = s.integer("reservoir", 0, config.RESERVOIR_CAPACITY_PULSES)
    basal_rate = s.integer("basal_rate", 0, config.MAX_BASAL_PULSES_PER_HOUR)
    basal_delivered = s.integer("basal_delivered", 0)
    bolus_delivered = s.integer("bolus_delivered", 0)
    basal_missed = s.integer("basal_missed", 0)
    low_alarmed = s.integer("low_alarmed", 0, 1)
    motor_base = s.integer("motor_base", 0)
    if (reservoir == 0) != (state is DeliveryState.EMPTY):
        raise DeliverySnapshotInvalid("reservoir is empty exactly when the state is EMPTY")

    bolus: ActiveBolus | None = None
    if state is DeliveryState.BOLUS:
        requested = s.integer("bolus_requested", 1, wire.ABSOLUTE_MAX_BOLUS_PULSES)
        so_far = s.integer("bolus_so_far", 0, requested - 1)
        if so_far > bolus_delivered:
            raise DeliverySnapshotInvalid("bolus delivered more than the ledger holds")
        bolus = ActiveBolus(s.cmd_id("bolus_cmd_id"), requested, so_far)
    else:
        s.none("bolus_cmd_id", "bolus_requested", "bolus_so_far")

    last: BolusEnded | None = None
    last_reason = s.integer("last_reason", 0, len(StopReason))
    if last_reason:
        last_requested = s.integer("last_requested", 1, wire.ABSOLUTE_MAX_BOLUS_PULSES)
        last_delivered = s.integer("last_delivered", 0, last_requested)
        reason = StopReason(last_reason)
        if reason is StopReason.COMPLETED and last_delivered != last_requested:
            raise DeliverySnapshotInvalid("a completed bolus delivered less than asked")
        last = BolusEnded(s.cmd_id("last_cmd_id"), last_requested, last_delivered, reason)
    else:
        s.none("last_cmd_id", "last_requested", "last_delivered")

    return DeliverySnapshot(
        state=state,
        reservoir=reservoir,
        basal_rate=basal_rate,
        basal_delivered=basal_delivered,
        bolus_delivered=bolus_delivered,
        basal_missed=basal_missed,
        low_alarmed=bool(low_alarmed),
        motor_base=motor_base,
        bolus=bolus,
        last_bolus=last,
    )


def reconcile(snapshot: DeliverySnapshot, *, motor_pulses: int) -> DeliverySnapshot:
    """``snapshot`` with the pulses the witness counted after it added in.

    The result is the ledger at boot, for ``DeliveryEngine.restore()`` to
    act on: its bolus may now be complete and its reservoir empty in any
    state, which :func:`decode_snapshot` would not accept from flash.

    Raises:
        DeliverySnapshotInvalid: ``motor_pulses`` is fewer than the ledger
            holds, or more than the reservoir could add (a different motor).
    """
    ledger = snapshot.motor_base + snapshot.basal_delivered + snapshot.bolus_delivered
    unrecorded = motor_pulses - ledger
    if not 0 <= unrecorded <= snapshot.reservoir:
        raise DeliverySnapshotInvalid(
            f"motor witness disagrees with the ledger by {unrecorded} pulses"
        )
    bolus = snapshot.bolus
    extra = 0 if bolus is None else min(unrecorded, bolus.requested - bolus.delivered)
    return replace(
        snapshot,
        reservoir=snapshot.reservoir - unrecorded,
        basal_delivered=snapshot.basal_delivered + unrecorded - extra,
        bolus_delivered=snapshot.bolus_delivered + extra,
        bolus=None if bolus is None else replace(bolus, delivered=bolus.delivered + extra),
    )


class _SnapshotReader:
    """Typed, range-checked reads from an untrusted snapshot mapping."""

    def __init__(self, snapshot: Mapping[str, object]) -> None:
        if not isinstance(snapshot, Mapping):
            raise DeliverySnapshotInvalid("snapshot is not a map")
        keys = set(snapshot)
        if keys != _KEYS:
            raise DeliverySnapshotInvalid(
                f"snapshot keys differ: missing {sorted(_KEYS - keys)}, "
                f"unexpected {sorted(map(repr, keys - _KEYS))}"
            )
        self._snap = snapshot
        if self.integer("v", 0) != _VERSION:
            raise DeliverySnapshotInvalid("unknown snapshot version")

    def integer(self, key: str, lo: int, hi: int | None = None) -> int:
        value = self._snap[key]
        if isinstance(value, bool) or not isinstance(value, int):
            raise DeliverySnapshotInvalid(f"{key} is not an integer")
        if value < lo or (hi is not None and value > hi):
            raise DeliverySnapshotInvalid(f"{key} out of range")
        return value

    def cmd_id(self, key: str) -> bytes:
        value = self._snap[key]
        if not isinstance(value, bytes) or len(value) != wire.COMMAND_ID_LEN:
            raise DeliverySnapshotInvalid(f"{key} is not a command id")
        return value

    def none(self, *keys: str) -> None:
        """The fields of an absent bolus must be exactly ``0`` or ``b""``."""
        for key in keys:
            value = self._snap[key]
            if not ((type(value) is int and value == 0) or value == b""):
                raise DeliverySnapshotInvalid(f"{key} set without a bolus")
