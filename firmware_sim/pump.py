"""The simulated pump firmware: one state machine driven by bytes and ticks.

:class:`Pump` is what a device engineer ports.  It owns no thread, no port
and no clock: the caller (``pumpsim`` through :mod:`firmware_sim.runner` and
the UART driver :mod:`firmware_sim.uart`, the demo, tests) feeds it link
bytes with :meth:`Pump.receive_data`, advances it with :meth:`Pump.tick`, and
sends what :meth:`Pump.data_to_send` returns.  Time is the pump's monotonic
clock, passed in as ``now``; randomness is passed in.

Theory of operation
-------------------

The pump wires parts that each have one job:

* :mod:`~firmware_sim.link`: framing, sessions, the handshake responder --
  link bytes in, authenticated requests and rejection events out (S9, S12);
* :mod:`~firmware_sim.commands`: the command table
  :data:`~firmware_sim.commands.COMMAND_TABLE` -- per request type, its
  handler, the modes it is taken in and the roles that may send it;
* :mod:`~firmware_sim.pairing_mode`: pairing mode as one ``PairingPhase``;
* :mod:`~firmware_sim.boot`: storage read back and checked at power-on;
* delivery, limits, audit log and stores, in their own modules.

* :mod:`~firmware_sim.buttons`: the front panel's button table
  :data:`~firmware_sim.buttons.BUTTON_TABLE`;

What stays here: boot, the tick, and every write
to storage, made in this order before a command is acknowledged (SPEC §13.3):

1. the persistent state, atomically (outcome record, ledger reservation);
2. the audit entry;
3. the delivery engine's snapshot;
4. only then the reply, and only then the first motor pulse (next tick).

A power cut between any two steps is recovered at boot (firmware_sim/boot.py).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import replace

from pumpguard.protocol import (
    LimitPolicy,
    Message,
    Outcome,
    ProtocolError,
    RandomBytes,
    pulses_to_units,
    pump_id,
    wire,
    x25519_private,
    x25519_public_bytes,
)
from pumpguard.protocol.audit_entry import FieldValue
from pumpguard.protocol.timebase import ms_floor

from . import buttons, config
from .audit import AuditLog
from .boot import StorageFault, restore
from .commands import Commands, Origin, PumpMode, Role
from .delivery import (
    Alarm,
    AlarmRaised,
    BolusEnded,
    DeliveryEngine,
    DeliveryRefused,
    PulsesDelivered,
)
from .delivery_snapshot import snapshot_to_bytes
from .flash import Flash
from .limits import BolusLedger
from .link import (
    CommandReceived,
    InputRejected,
    Link,
    LinkEvent,
    PairingRecordReceived,
    SessionConfirmed,
)
from .motor import Motor
from .pairing_mode import PairingDone, PairingMode
from .panel import FrontPanel
from .state import OutcomeRecord, PersistentState, encode_state
from .store import SnapshotStore

__all__ = ["Pump", "PumpMode"]


log = logging.getLogger("pumpguard.pump")


class Pump:
    """The firmware.  Build it with :meth:`boot`."""

    def __init__(
        self,
        *,
        flash: Flash,
        motor: Motor,
        random_bytes: RandomBytes,
        now: float,
        panel: FrontPanel | None = None,
    ) -> None:
        """Prefer :meth:`boot`; this runs the same boot sequence."""
        self.panel = panel or FrontPanel()
        self._flash = flash
        self._motor = motor
        self._random_bytes = random_bytes
        if (flash.sector_size, flash.sector_count) != (
            config.FLASH_SECTOR_SIZE,
            config.FLASH_SECTOR_COUNT,
        ):
            raise ValueError("the flash does not have the pump's geometry (config.FLASH_*)")
        self._main_store = SnapshotStore(flash, *config.FLASH_MAIN_STORE)
        self._delivery_store = SnapshotStore(flash, *config.FLASH_DELIVERY_STORE)
        self._link = Link(
            random_bytes=random_bytes, on_command=self._on_command, on_event=self._on_link_event
        )
        self._pairing = PairingMode(
            panel=self.panel, send=self._link.send, random_bytes=random_bytes
        )
        self._commands = Commands(self, random_bytes)
        self._safe_state = False
        self._rejections_unshown = 0
        self._rejections_shown_at = -config.REJECTION_ALERT_S
        #: Alarms raised and not yet acknowledged on the front panel.
        self._alarms: set[Alarm] = set()
        self._boot(now)

    @classmethod
    def boot(
        cls,
        *,
        flash: Flash,
        motor: Motor,
        random_bytes: RandomBytes,
        now: float,
        panel: FrontPanel | None = None,
    ) -> Pump:
        """Power on: load storage, reconcile with the motor, start basal."""
        return cls(flash=flash, motor=motor, random_bytes=random_bytes, now=now, panel=panel)

    # --- boot -------------------------------------------------------------------------

    def _boot(self, now: float) -> None:
        try:
            restored = restore(
                flash=self._flash,
                main_store=self._main_store,
                delivery_store=self._delivery_store,
                motor=self._motor,
                random_bytes=self._random_bytes,
                panel=self.panel,
                now=now,
            )
        except StorageFault as fault:
            self._enter_safe_state(now, str(fault))
            return
        self._state = restored.state
        self._ledger = restored.ledger
        self._audit = restored.audit
        self._audit.on_alert = lambda text: self.panel.show("alert", text)
        self._audit_public = restored.audit_public
        self._delivery = restored.delivery
        self._static = x25519_private(self._state.pump_static)
        self._link.trust(self._static, self._state.remotes)
        # The monotonic clock restarted: a lockout is served again in full.
        self._pairing.lock_out(self._state.pairing_failures, now)
        # Step 6 of SPEC §13.3 "Boot": the first writes.
        self._commit_state()
        self._audit.append("boot", {"boot": self._state.boot_count}, ms_floor(now))
        self.persist_delivery()
        self.panel.show("info", f"pump ready; {len(self._state.remotes)} remote(s) paired")

    def _enter_safe_state(self, now: float, why: str) -> None:
        """Corrupt storage: never fall back to permissive defaults (S8).

        Basal continues from a fresh engine (the pump's factory basal), every
        remote command is refused by dropping it (no keys are trusted), and
        the alarm stays until the user resets storage at the pump.
        """
        log.error("SAFE STATE: %s", why)
        self._safe_state = True
        self._state = PersistentState(
            pump_static=bytes(wire.X25519_KEY_LEN), audit_key=bytes(wire.ED25519_SEED_LEN)
        )
        self._audit_public = bytes(wire.ED25519_PUBLIC_LEN)
        self._delivery = DeliveryEngine(self._motor, now=now)
        self._ledger = BolusLedger.assume_full(self._state.policy, now=now)
        self._link.distrust()
        self.panel.show("alarm", "STORAGE FAULT: remote control disabled; reset storage at pump")

    # --- the link -----------------------------------------------------------------------

    def receive_data(self, data: bytes, now: float) -> None:
        """Bytes from the link.  Never raises on anything the link sends."""
        self._link.receive_data(data, now)

    def data_to_send(self) -> bytes:
        """Bytes to write to the link (empties the outbox)."""
        return self._link.data_to_send()

    @property
    def on_record(self) -> Callable[[str, bytes, str], None] | None:
        """Called for every record in and out: ``(direction, record, verdict)``.
        ``pumpsim -v`` logs it with :func:`protocol.describe_record`."""
        return self._link.on_record

    @on_record.setter
    def on_record(self, hook: Callable[[str, bytes, str], None] | None) -> None:
        self._link.on_record = hook

    def _on_command(self, command: CommandReceived, now: float) -> Message:
        # Every paired remote is a person's remote: the state stores no other role yet.
        return self._commands.dispatch(command.request, Origin(command.remote, Role.REMOTE), now)

    def _on_link_event(self, event: LinkEvent, now: float) -> None:
        if isinstance(event, InputRejected):
            self._reject(event.kind, now)
        elif isinstance(event, SessionConfirmed):
            self._commands.forget_challenge()
        elif isinstance(event, PairingRecordReceived):
            self._on_pairing_record(event.record, now)

    def _reject(self, kind: str, now: float) -> None:
        """Count a refused input: aggregated in the audit log, never one write each."""
        log.debug("rejected %s", kind)
        self._rejections_unshown += 1
        if not self._safe_state:
            self._audit.note_rejection(kind, ms_floor(now))

    def _alert_rejections(self, now: float) -> None:
        """Tell the user about refused input (S10), at most once a minute."""
        if self._rejections_unshown and now - self._rejections_shown_at >= config.REJECTION_ALERT_S:
            self.panel.show("alert", f"{self._rejections_unshown} refused message(s) on the link")
            self._rejections_unshown = 0
            self._rejections_shown_at = now

    # --- tick ---------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Advance delivery, timeouts and front-panel presses to ``now``."""
        for button, argument in self.panel.take_presses():
            buttons.press(self, button, argument, now)
        pulsed = False
        for event in self._delivery.tick(now):
            if isinstance(event, PulsesDelivered):
                pulsed = True
            elif isinstance(event, BolusEnded):
                self.settle_bolus(event, now)
            elif isinstance(event, AlarmRaised):
                self._alarms.add(event.alarm)
                self.panel.show("alarm", event.alarm.name.replace("_", " ").lower())
                if not self._safe_state:
                    self._audit.append("alarm", {"alarm": event.alarm.name}, ms_floor(now))
        if pulsed:
            self.persist_delivery()
        self._expire(now)
        self._alert_rejections(now)
        if not self._safe_state:
            self._audit.poll(ms_floor(now))

    def _expire(self, now: float) -> None:
        self._commands.expire(now)
        self._link.expire(now)
        if self._pairing.timed_out(now):
            self._pairing_failed(now, "pairing mode timed out")
        self._pairing.expire(now)

    # --- front panel ------------------------------------------------------------------

    # What each button does, and in which mode, is BUTTON_TABLE (firmware_sim/buttons.py);
    # these are the writes its rows ask for.

    def open_pairing(self, now: float) -> None:
        self._pairing.open(now, local_static=self._static, paired=len(self._state.remotes))

    def confirm_pairing(self, now: float) -> None:
        done = self._pairing.user_confirms()
        if done is not None:
            self._finish_pairing(done, now)

    def reject_pairing(self, now: float) -> None:
        if self._pairing.is_open:
            self._pairing_failed(now, "code rejected at the pump")

    def set_remote_bolus(self, enabled: bool, now: float) -> None:
        self._change_setting(
            replace(self._state, remote_bolus_enabled=enabled),
            "remote_bolus",
            {"enabled": enabled},
            now,
        )
        self.panel.show("info", f"remote bolus {'ON' if enabled else 'OFF'}")

    def enrol_prescriber(self, key: bytes, now: float) -> None:
        self._change_setting(
            replace(self._state, prescriber=key),
            "prescriber_enrolled",
            {"key_id": hashlib.sha256(key).digest()[:8]},
            now,
        )
        self.panel.show("info", "prescriber key enrolled")

    def _change_setting(
        self, state: PersistentState, event: str, fields: Mapping[str, FieldValue], now: float
    ) -> None:
        """A setting changed at the panel: main store, then audit (SPEC §13.3)."""
        self._state = state
        self._commit_state()
        self._audit.append(event, fields, ms_floor(now))

    def unpair_all(self, now: float) -> None:
        self.remove_remotes(list(self._state.remotes), now, "pump")

    def clear_alarms(self) -> None:
        self._alarms.clear()
        self.panel.show("info", "alarms cleared")

    def reset_storage(self, now: float) -> None:
        # Formatting destroys every snapshot before erasing, so a power cut
        # part-way can never bring an older state (say, unpaired keys) back.
        self._main_store.format()
        self._delivery_store.format()
        for sector in range(self._flash.sector_count):
            self._flash.erase(sector)
        self._safe_state = False
        self._boot(now)

    # --- pairing ----------------------------------------------------------------------

    def _on_pairing_record(self, record: bytes, now: float) -> None:
        try:
            done = self._pairing.on_record(record, now)
        except ProtocolError:
            if self._pairing.attempt_failed:
                self._pairing_failed(now, "pairing message refused")
            raise
        if done is not None:
            self._finish_pairing(done, now)

    def _finish_pairing(self, done: PairingDone, now: float) -> None:
        peer = done.result.peer_static
        remotes = tuple(r for r in self._state.remotes if r != peer)
        # Atomic: the new remote, the reset failure count and remote bolus
        # switched off in one commit (S8).  A new remote never inherits remote
        # bolus: if the user confirmed a code without comparing it, the remote
        # they paired cannot deliver insulin until they also switch it on (S4).
        was_enabled = self._state.remote_bolus_enabled
        self._state = replace(
            self._state,
            remotes=(*remotes, peer),
            pairing_failures=0,
            remote_bolus_enabled=False,
        )
        self._commit_state()
        self._link.set_remotes(self._state.remotes)
        self._audit.append("paired", {"remote": peer[:4].hex()}, ms_floor(now))
        self._pairing.close(self._state.pairing_failures, now)
        self.panel.show("pairing", "remote paired")
        if was_enabled:
            self.panel.show("info", "remote bolus is now OFF: switch it on again in the menu")
        self._pairing.answer(done, now)

    def _pairing_failed(self, now: float, why: str) -> None:
        failures = self._state.pairing_failures + 1
        self._state = replace(self._state, pairing_failures=failures)
        self._commit_state()
        self._audit.append("pairing_failed", {"reason": why, "failures": failures}, ms_floor(now))
        self._pairing.close(failures, now)
        self.panel.show("pairing", f"pairing failed: {why}")

    # --- writes the command handlers ask for (SPEC §13.3) ---------------------------

    def start_bolus(
        self, command_id: bytes, pulses: int, now: float, *, remote: bytes
    ) -> OutcomeRecord:
        """Commit a bolus whose checks passed: steps 1-3 of the commit order
        (module docstring), then the alert.  The caller replies."""
        record = OutcomeRecord(command_id, pulses, Outcome.IN_PROGRESS, 0)
        self._ledger.commit(command_id, pulses, now)
        self._commit_outcome(record, now, remote)
        self._audit.append("bolus_started", {"pulses": pulses, "cmd_id": command_id}, ms_floor(now))
        try:
            self._delivery.start_bolus(command_id, pulses, now)
        except DeliveryRefused:
            record = replace(record, outcome=Outcome.INTERRUPTED)
            self._state = self._state.with_outcome(record)
            self._commit_state()
            return record
        self.persist_delivery()
        self.panel.show(
            "alert", f"REMOTE BOLUS {pulses_to_units(pulses)} U started - press CANCEL to stop"
        )
        return record

    def settle_bolus(self, ended: BolusEnded, now: float) -> OutcomeRecord:
        """A bolus is over: record its final outcome, then audit it (S10)."""
        record = OutcomeRecord(ended.cmd_id, ended.requested, ended.outcome, ended.delivered)
        if self._safe_state:
            return record
        stored = self._state.outcome(ended.cmd_id)
        if stored is not None and stored.outcome is not Outcome.IN_PROGRESS:
            # Settled before a power cut (found again at boot): write only what
            # the cut may have lost -- never a second end entry.
            self._audit_bolus_end(stored, now)
            self.persist_delivery()
            return stored
        reserved = self._ledger.reserved
        if reserved is not None and reserved[0] == ended.cmd_id:
            # After a reboot the reservation is gone: the restored ledger then
            # counts all requested pulses, which never undercounts.
            self._ledger.settle(ended.cmd_id, ended.delivered, now)
        self._commit_outcome(record, now)
        self._audit_bolus_end(record, now, check_recent=False)
        self.persist_delivery()
        self.panel.show(
            "info", f"bolus {ended.outcome.name.lower()}: {pulses_to_units(ended.delivered)} U"
        )
        return record

    def _audit_bolus_end(
        self, record: OutcomeRecord, now: float, *, check_recent: bool = True
    ) -> None:
        """The bolus's end entry (S10); with ``check_recent``, only if the last
        entries do not already hold it (a cut between audit and snapshot)."""
        event = "bolus_" + record.outcome.name.lower()
        if check_recent and any(
            entry.event == event and entry.fields.get("cmd_id") == record.command_id
            for entry in self._audit.entries()[-4:]
        ):
            return
        self._audit.append(
            event,
            {
                "pulses": record.delivered,
                "requested_pulses": record.requested,
                "cmd_id": record.command_id,
            },
            ms_floor(now),
        )

    def adopt_policy(self, policy: LimitPolicy, now: float) -> None:
        """A verified, newer limits policy: main store, then audit (SPEC §13.3)."""
        self._ledger.set_policy(policy)
        self._state = replace(self._state, policy=policy)
        self._commit_state()
        fields = {
            "version": policy.version,
            "max_bolus_pulses": policy.max_bolus_pulses,
            "max_1h_pulses": policy.max_1h_pulses,
            "max_24h_pulses": policy.max_24h_pulses,
        }
        self._audit.append("policy", fields, ms_floor(now))
        self.panel.show("info", f"new limits v{policy.version} from prescriber")

    def remove_remotes(self, remotes: list[bytes], now: float, by: str) -> None:
        """Unpair: erase the keys and drop their sessions (S11)."""
        kept = tuple(r for r in self._state.remotes if r not in remotes)
        self._state = replace(self._state, remotes=kept)
        self._commit_state()
        self._link.set_remotes(kept)
        for remote in remotes:
            self._audit.append("unpaired", {"by": by, "remote": remote[:4].hex()}, ms_floor(now))
        self.panel.show("info", f"{len(remotes)} remote(s) unpaired")

    # --- persistence ------------------------------------------------------------------

    def _commit_state(self) -> None:
        self._main_store.commit(encode_state(self._state))

    def _commit_outcome(
        self, record: OutcomeRecord, now: float, remote: bytes | None = None
    ) -> None:
        """A bolus's outcome (filed under ``remote`` if new) and the ledger, in one commit."""
        self._state = replace(
            self._state.with_outcome(record, remote), ledger=self._ledger.snapshot(now)
        )
        self._commit_state()

    def persist_delivery(self) -> None:
        if self._safe_state:
            return  # storage is not trusted; the motor's witness is the record
        self._delivery_store.commit(snapshot_to_bytes(self._delivery.snapshot()))

    # --- read-only view ---------------------------------------------------------------

    @property
    def mode(self) -> PumpMode:
        if self._safe_state:
            return PumpMode.SAFE_STATE
        return PumpMode.PAIRING if self._pairing.is_open else PumpMode.RUNNING

    @property
    def pump_id(self) -> bytes:
        return (
            pump_id(x25519_public_bytes(self._static))
            if not self._safe_state
            else bytes(wire.PUMP_ID_LEN)
        )

    @property
    def static_public(self) -> bytes:
        return x25519_public_bytes(self._static)

    @property
    def audit_public_key(self) -> bytes:
        return self._audit_public

    @property
    def persistent(self) -> PersistentState:
        return self._state

    @property
    def delivery(self) -> DeliveryEngine:
        return self._delivery

    @property
    def ledger(self) -> BolusLedger:
        return self._ledger

    @property
    def audit(self) -> AuditLog:
        return self._audit

    @property
    def alarms(self) -> frozenset[Alarm]:
        """Alarms raised and not yet acknowledged on the front panel."""
        return frozenset(self._alarms)
