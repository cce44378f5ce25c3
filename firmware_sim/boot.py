"""Power-on: read the pump's storage back and check it before anything trusts it.

:func:`restore` is steps 1-5 of SPEC §13.3 "Boot": the persistent state
(factory state on a blank store), the limits ledger, the audit log, the
delivery engine reconciled with the motor's witness, and outcomes a power cut
left IN_PROGRESS.  It writes nothing.  Step 6 -- commit the boot count,
append the ``boot`` audit entry, commit the delivery snapshot -- is the
pump's, like every write (firmware_sim/pump.py).

Storage that is corrupt, or that the motor's witness contradicts, raises
:class:`StorageFault`: the pump then starts in its safe state, never from
permissive defaults (S8).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pumpguard.protocol import Outcome, PolicyInvalid, RandomBytes, wire

from . import config
from .audit import AuditLog
from .delivery import DeliveryEngine
from .delivery_snapshot import snapshot_from_bytes
from .flash import Flash
from .limits import BolusLedger, LimitError
from .motor import Motor
from .panel import FrontPanel
from .state import PersistentState, StateInvalid, decode_state
from .store import SnapshotStore, StorageCorrupt


class StorageFault(Exception):
    """Storage cannot be trusted: the pump starts in its safe state (S8)."""


@dataclass
class Restored:
    """What the pump starts from."""

    #: With the boot count already incremented; not yet committed.
    state: PersistentState
    ledger: BolusLedger
    audit: AuditLog
    audit_public: bytes
    delivery: DeliveryEngine


def restore(
    *,
    flash: Flash,
    main_store: SnapshotStore,
    delivery_store: SnapshotStore,
    motor: Motor,
    random_bytes: RandomBytes,
    panel: FrontPanel,
    now: float,
) -> Restored:
    """Read and check the stores (SPEC §13.3 "Boot", steps 1-5).

    Raises:
        StorageFault: a store is corrupt, or the delivery snapshot and the
            motor's witness disagree.
    """
    try:
        raw = main_store.load()
        state = factory_state(random_bytes) if raw is None else decode_state(raw)
    except (StorageCorrupt, StateInvalid) as exc:
        raise StorageFault(f"storage corrupt: {exc}") from None
    state = replace(state, boot_count=state.boot_count + 1)
    try:
        ledger = BolusLedger.restore(state.ledger, policy=state.policy, now=now)
    except (LimitError, PolicyInvalid):
        # A bad ledger must never make the pump more permissive (S8).
        ledger = BolusLedger.assume_full(state.policy, now=now)
        panel.show("alarm", "bolus history unreadable: remote boluses refused for 24 h")
    audit_key = Ed25519PrivateKey.from_private_bytes(state.audit_key)
    audit_public = audit_key.public_key().public_bytes_raw()
    audit = AuditLog(flash, *config.FLASH_AUDIT, signing_key=audit_key)
    try:
        raw_delivery = delivery_store.load()
        if raw_delivery is None:
            delivery = DeliveryEngine(motor, now=now)
        else:
            delivery = DeliveryEngine.restore(
                snapshot_from_bytes(raw_delivery), motor=motor, now=now
            )
    except Exception as exc:  # corrupt delivery snapshot or witness mismatch
        raise StorageFault(f"delivery state invalid: {type(exc).__name__}") from None
    # An outcome left IN_PROGRESS with no bolus in the delivery snapshot:
    # the cut came between steps 1 and 3 of a commit.  Nothing was pulsed.
    active = delivery.active_bolus
    last = delivery.last_bolus
    for record in state.outcomes:
        if (
            record.outcome is Outcome.IN_PROGRESS
            and (active is None or active.cmd_id != record.command_id)
            and (last is None or last.cmd_id != record.command_id)
        ):
            state = state.with_outcome(replace(record, outcome=Outcome.INTERRUPTED, delivered=0))
    return Restored(state, ledger, audit, audit_public, delivery)


def factory_state(random_bytes: RandomBytes) -> PersistentState:
    """A new pump: fresh keys, nothing paired, remote bolus off, factory limits."""
    return PersistentState(
        pump_static=random_bytes(wire.X25519_KEY_LEN),
        audit_key=random_bytes(wire.ED25519_SEED_LEN),
    )
