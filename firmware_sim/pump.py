"""The simulated pump firmware: one state machine driven by bytes and ticks.

:class:`Pump` is what a device engineer ports.  It owns no thread, no port
and no clock: the caller (``firmware_sim.serial_binding``, the demo, tests)
feeds it link bytes with :meth:`Pump.receive_data`, advances it with
:meth:`Pump.tick`, and sends what :meth:`Pump.data_to_send` returns.  Time is
the pump's monotonic clock, passed in as ``now``; randomness is passed in.

Theory of operation
-------------------

Link records are dispatched by type, and the table :data:`_RECORD_RULES`
says in which pump modes each type is even looked at:

* ``PAIR_*`` only while the user holds the pump in pairing mode;
* ``HANDSHAKE_INIT`` only when a remote is paired and storage is healthy;
* ``DATA`` only under the current (or pending) session.

Anything else is dropped without a reply and counted in the audit log's
aggregated rejection entry (S9, S10, S12).

Every command that changes what the pump will do is persisted before it is
acknowledged, in this order (SPEC §13.3):

1. the persistent state, atomically (outcome record, ledger reservation);
2. the audit entry;
3. the delivery engine's snapshot;
4. only then the reply, and only then the first motor pulse (next tick).

A power cut between any two steps is recovered at boot: an outcome left
IN_PROGRESS without a running bolus in the delivery snapshot becomes
INTERRUPTED with the pulses the motor's witness shows.
"""

from __future__ import annotations

import enum
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace

import cbor2
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pumpguard.protocol import (
    AuthenticationFailed,
    BolusCancel,
    BolusChallenge,
    BolusCommit,
    BolusPrepare,
    CommandOutcome,
    CommandQuery,
    FrameDecoder,
    FramingError,
    HandshakeResponder,
    History,
    HistoryRequest,
    LimitPolicy,
    MalformedRecord,
    Message,
    Ok,
    Outcome,
    PairedPeer,
    PairingResponder,
    PairingState,
    PolicyInvalid,
    PolicyUpload,
    ProtocolError,
    RandomBytes,
    RecordType,
    RefusalCode,
    Refused,
    RemoteProtocolError,
    SecureSession,
    Status,
    StatusRequest,
    Unpair,
    constant_time_equal,
    decode_message,
    encode_frame,
    encode_message,
    paired_peer,
    pulses_to_units,
    pump_id,
    verify_policy,
    wire,
    x25519_private,
    x25519_public_bytes,
)

from . import config
from .audit import AuditLog
from .delivery import (
    Alarm,
    AlarmRaised,
    BolusEnded,
    DeliveryEngine,
    DeliveryRefused,
    DeliveryState,
    PulsesDelivered,
)
from .flash import Flash
from .limits import BolusLedger, LimitError, LimitExceeded
from .motor import Motor
from .panel import Button, FrontPanel
from .state import (
    OutcomeRecord,
    PersistentState,
    StateInvalid,
    decode_state,
    encode_state,
)
from .store import SnapshotStore, StorageCorrupt


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


log = logging.getLogger("pumpguard.pump")


class PumpMode(enum.Enum):
    """The firmware's top-level mode."""

    #: Normal operation.
    RUNNING = enum.auto()
    #: The user opened the pairing menu: pairing records are accepted.
    PAIRING = enum.auto()
    #: Storage was corrupt or inconsistent: basal only, remote commands
    #: refused, alarm shown, until the user resets storage at the pump (S8).
    SAFE_STATE = enum.auto()


@dataclass
class _Challenge:
    command_id: bytes
    pulses: int
    challenge: bytes
    expires_at: float

    def live_for(self, command_id: bytes, pulses: int, now: float) -> bool:
        """Issued for exactly this id and dose, and not expired on the pump's clock."""
        return self.command_id == command_id and self.pulses == pulses and now <= self.expires_at


@dataclass
class _LiveSession:
    session: SecureSession
    remote_static: bytes
    last_used: float


#: Short names for refused inputs in the audit log's aggregated entry.
_REJECTION_KINDS = {
    "FramingError": "framing",
    "MalformedRecord": "malformed",
    "AuthenticationFailed": "bad-auth",
    "ReplayRefused": "replay",
    "HandshakeRefused": "hs-replay",
    "MalformedMessage": "bad-message",
}


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
        self._decoder = FrameDecoder()
        self._outbox = bytearray()
        if (flash.sector_size, flash.sector_count) != (
            config.FLASH_SECTOR_SIZE,
            config.FLASH_SECTOR_COUNT,
        ):
            raise ValueError("the flash does not have the pump's geometry (config.FLASH_*)")
        self._main_store = SnapshotStore(flash, *config.FLASH_MAIN_STORE)
        self._delivery_store = SnapshotStore(flash, *config.FLASH_DELIVERY_STORE)
        self._session: _LiveSession | None = None
        self._pending: _LiveSession | None = None
        self._challenge: _Challenge | None = None
        self._pairing: PairingResponder | None = None
        self._pairing_deadline = 0.0
        self._pairing_locked_until = 0.0
        self._pairing_user_confirmed = False
        #: The remote's PAIR_REMOTE_CONFIRM of the attempt in progress.
        self._remote_confirm = b""
        #: (last pairing record received, our reply, until when to repeat it).
        self._pairing_echo: tuple[bytes, bytes, float] | None = None
        self._rejections_unshown = 0
        self._rejections_shown_at = -config.REJECTION_ALERT_S
        #: Alarms raised and not yet acknowledged on the front panel.
        self._alarms: set[Alarm] = set()
        #: Called for every record in and out: ``(direction, record, verdict)``.
        #: ``pumpsim -v`` logs it with :func:`protocol.describe_record`.
        self.on_record: Callable[[str, bytes, str], None] | None = None
        self._now = now
        self.mode = PumpMode.RUNNING
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
            raw = self._main_store.load()
            state = self._factory_state() if raw is None else decode_state(raw)
        except (StorageCorrupt, StateInvalid) as exc:
            self._enter_safe_state(now, f"storage corrupt: {exc}")
            return
        state = replace(state, boot_count=state.boot_count + 1)
        self._state = state
        try:
            self._ledger = BolusLedger.restore(state.ledger, policy=state.policy, now=now)
        except (LimitError, PolicyInvalid):
            # A bad ledger must never make the pump more permissive (S8).
            self._ledger = BolusLedger.assume_full(state.policy, now=now)
            self.panel.show("alarm", "bolus history unreadable: remote boluses refused for 24 h")
        audit_key = Ed25519PrivateKey.from_private_bytes(state.audit_key)
        self._audit_public = audit_key.public_key().public_bytes_raw()
        self._audit = AuditLog(self._flash, *config.FLASH_AUDIT, signing_key=audit_key)
        try:
            raw_delivery = self._delivery_store.load()
            if raw_delivery is None:
                self._delivery = DeliveryEngine(self._motor, now=now)
            else:
                self._delivery = DeliveryEngine.restore(
                    cbor2.loads(raw_delivery), motor=self._motor, now=now
                )
        except Exception as exc:  # corrupt delivery snapshot or witness mismatch
            self._enter_safe_state(now, f"delivery state invalid: {type(exc).__name__}")
            return
        self._static = x25519_private(state.pump_static)
        self._responder = HandshakeResponder(
            local_static=self._static, random_bytes=self._random_bytes
        )
        self._peers = self._make_peers()
        # An outcome left IN_PROGRESS with no bolus in the delivery snapshot:
        # the cut came between steps 1 and 3 of a commit.  Nothing was pulsed.
        active = self._delivery.active_bolus
        last = self._delivery.last_bolus
        for record in state.outcomes:
            if (
                record.outcome is Outcome.IN_PROGRESS
                and (active is None or active.cmd_id != record.command_id)
                and (last is None or last.cmd_id != record.command_id)
            ):
                self._state = self._state.with_outcome(
                    replace(record, outcome=Outcome.INTERRUPTED, delivered=0)
                )
        if state.pairing_failures >= config.PAIRING_FAILURES_BEFORE_LOCKOUT:
            # The monotonic clock restarted: serve the whole lockout again.
            self._pairing_locked_until = now + self._lockout_seconds()
        self._commit_state()
        self._audit.append("boot", {"boot": self._state.boot_count}, self._ms(now))
        self._persist_delivery()
        self.panel.show("info", f"pump ready; {len(self._state.remotes)} remote(s) paired")

    def _factory_state(self) -> PersistentState:
        return PersistentState(
            pump_static=self._random_bytes(wire.X25519_KEY_LEN),
            audit_key=self._random_bytes(32),
        )

    def _enter_safe_state(self, now: float, why: str) -> None:
        """Corrupt storage: never fall back to permissive defaults (S8).

        Basal continues from a fresh engine (the pump's factory basal), every
        remote command is refused by dropping it (no keys are trusted), and
        the alarm stays until the user resets storage at the pump.
        """
        log.error("SAFE STATE: %s", why)
        self.mode = PumpMode.SAFE_STATE
        self._state = PersistentState(pump_static=bytes(32), audit_key=bytes(32))
        self._audit_public = bytes(32)
        self._delivery = DeliveryEngine(self._motor, now=now)
        self._ledger = BolusLedger.assume_full(self._state.policy, now=now)
        self._peers = []
        self.panel.show("alarm", "STORAGE FAULT: remote control disabled; reset storage at pump")

    # --- link I/O ---------------------------------------------------------------------

    def receive_data(self, data: bytes, now: float) -> None:
        """Bytes from the link.  Never raises on anything the link sends."""
        self._now = now
        self._decoder.receive_data(data)
        while True:
            try:
                record = self._decoder.next_record()
            except FramingError as exc:
                if self.on_record is not None:
                    self.on_record("rx", b"", f"dropped: {exc}")
                self._reject("framing", now)
                continue
            if record is None:
                return
            self._on_record(record, now)

    def data_to_send(self) -> bytes:
        """Bytes to write to the link (empties the outbox)."""
        data = bytes(self._outbox)
        self._outbox.clear()
        return data

    def _send(self, record: bytes) -> None:
        if self.on_record is not None:
            self.on_record("tx", record, "sent")
        self._outbox += encode_frame(record)

    def _reject(self, kind: str, now: float) -> None:
        """Count a refused input: aggregated in the audit log, never one write each."""
        log.debug("rejected %s", kind)
        self._rejections_unshown += 1
        if self.mode is not PumpMode.SAFE_STATE:
            self._audit.note_rejection(kind, self._ms(now))

    def _alert_rejections(self, now: float) -> None:
        """Tell the user about refused input (S10), at most once a minute."""
        if self._rejections_unshown and now - self._rejections_shown_at >= config.REJECTION_ALERT_S:
            self.panel.show("alert", f"{self._rejections_unshown} refused message(s) on the link")
            self._rejections_unshown = 0
            self._rejections_shown_at = now

    def _on_record(self, record: bytes, now: float) -> None:
        kind = record[0]
        if self.mode is PumpMode.SAFE_STATE:
            return
        try:
            if kind == RecordType.DATA:
                self._on_data(record, now)
            elif kind == RecordType.HANDSHAKE_INIT:
                self._on_handshake(record, now)
            elif RecordType.PAIR_REQUEST <= kind <= RecordType.PAIR_PUMP_CONFIRM:
                self._on_pairing(record, now)
            else:
                raise MalformedRecord("unknown record type")
        except RemoteProtocolError as exc:
            if log.isEnabledFor(logging.INFO):  # refusals are the flood path: keep it cheap
                log.info(
                    "refused %s record (%d bytes): %s",
                    _type_name(kind),
                    len(record),
                    type(exc).__name__,
                )
            self._reject(_REJECTION_KINDS.get(type(exc).__name__, "other"), now)
            if self.on_record is not None:
                self.on_record("rx", record, f"refused ({type(exc).__name__})")
            return
        if self.on_record is not None:
            self.on_record("rx", record, "accepted")

    # --- session ----------------------------------------------------------------------

    def _make_peers(self) -> list[PairedPeer]:
        return [
            paired_peer(self._static, remote, local_is_remote=False)
            for remote in self._state.remotes
        ]

    def _on_handshake(self, record: bytes, now: float) -> None:
        if not self._peers:
            raise AuthenticationFailed("no remote is paired")
        accepted = self._responder.respond(record, self._peers)
        # Pending until the remote's first DATA record proves it holds the keys.
        self._pending = _LiveSession(
            SecureSession(accepted.keys, established_at=now),
            self._state.remotes[accepted.peer_index],
            last_used=now,
        )
        self._send(accepted.reply)

    def _on_data(self, record: bytes, now: float) -> None:
        live = self._session
        plaintext: bytes | None = None
        if live is not None and not live.session.expired(now):
            try:
                plaintext = live.session.open(record)
            except RemoteProtocolError:
                # Maybe the first record of a new handshake's session.
                if self._pending is None:
                    raise
        if plaintext is None:
            pending = self._pending
            if pending is None:
                raise AuthenticationFailed("no session")
            plaintext = pending.session.open(record)
            # Key confirmation (SPEC §6.4): promote, forget the old session's keys.
            self._session, self._pending = pending, None
            self._challenge = None
            live = pending
        assert live is not None
        live.last_used = now
        try:
            request = decode_message(plaintext)
        except ProtocolError:
            self._reply(live, Refused(0, RefusalCode.MALFORMED_REQUEST, 0))
            return
        log.info("command %s", type(request).__name__)
        self._reply(live, self._dispatch(request, live, now))

    def _reply(self, live: _LiveSession, message: Message) -> None:
        self._send(live.session.seal(encode_message(message)))

    # --- commands ---------------------------------------------------------------------

    def _dispatch(self, request: Message, live: _LiveSession, now: float) -> Message:
        handler = _HANDLERS.get(type(request))
        if handler is None:  # a response type sent to the pump
            return Refused(request.request_id, RefusalCode.MALFORMED_REQUEST, 0)
        return handler(self, request, live, now)

    def _status(self, request: Message, live: _LiveSession, now: float) -> Message:
        state = self._state
        active = self._delivery.active_bolus
        policy = state.policy
        return Status(
            request_id=request.request_id,
            remote_bolus_enabled=state.remote_bolus_enabled,
            state=self._delivery.state.value,
            bolus_pulses=self._delivery.bolus_pulses_delivered,
            basal_pulses=self._delivery.basal_pulses_delivered,
            reservoir_pulses=self._delivery.reservoir_pulses,
            active_command_id=b"" if active is None else active.cmd_id,
            active_requested=0 if active is None else active.requested,
            active_delivered=0 if active is None else active.delivered,
            alarms=sum(1 << alarm.value for alarm in self._alarms),
            limits_version=policy.version,
            max_bolus_pulses=policy.max_bolus_pulses,
            max_1h_pulses=policy.max_1h_pulses,
            max_24h_pulses=policy.max_24h_pulses,
            pump_id=self.pump_id,
            audit_key=self.audit_public_key,
            audit_next_seq=self._audit.next_seq,
        )

    def _known_outcome(self, request_id: int, command_id: bytes, pulses: int) -> Message | None:
        """Exactly once (S7): a known id answers with its stored outcome, or a conflict."""
        record = self._state.outcome(command_id)
        if record is None:
            return None
        if record.requested != pulses:
            return Refused(request_id, RefusalCode.COMMAND_ID_CONFLICT, 0)
        return self._outcome_message(request_id, record)

    def _outcome_message(self, request_id: int, record: OutcomeRecord) -> CommandOutcome:
        delivered = record.delivered
        active = self._delivery.active_bolus
        if active is not None and active.cmd_id == record.command_id:
            delivered = active.delivered
        return CommandOutcome(
            request_id, record.command_id, record.outcome, record.requested, delivered
        )

    def _bolus_refusal(self, request_id: int, pulses: int, now: float) -> Refused | None:
        if not self._state.remote_bolus_enabled:
            self.panel.show("alert", "remote bolus refused: remote bolus is off")
            return Refused(request_id, RefusalCode.REMOTE_BOLUS_DISABLED, 0)
        try:
            self._ledger.check(pulses, now)
        except LimitExceeded as exc:
            units = pulses_to_units(pulses)
            self.panel.show("alert", f"remote bolus of {units} U refused: over {exc.which} limit")
            self._audit.append(
                "limit_refused",
                {"requested_pulses": pulses, "limit": str(exc.which)},
                self._ms(now),
            )
            return Refused(request_id, exc.which.refusal, exc.allowed_pulses)
        if self._delivery.active_bolus is not None:
            return Refused(request_id, RefusalCode.BUSY, 0)
        if (
            pulses > self._delivery.reservoir_pulses
            or self._delivery.state is not DeliveryState.IDLE
        ):
            return Refused(request_id, RefusalCode.DELIVERY_UNAVAILABLE, 0)
        return None

    def _bolus_prepare(self, request: Message, live: _LiveSession, now: float) -> Message:
        assert isinstance(request, BolusPrepare)
        known = self._known_outcome(request.request_id, request.command_id, request.pulses)
        if known is not None:
            return known
        if request.pulses == 0:
            return Refused(request.request_id, RefusalCode.MALFORMED_REQUEST, 0)
        refusal = self._bolus_refusal(request.request_id, request.pulses, now)
        if refusal is not None:
            return refusal
        pending = self._challenge
        if pending is None or not pending.live_for(request.command_id, request.pulses, now):
            # A repeated prepare (the remote resent it) gets the same live
            # challenge, so whichever answer the remote sees first still works.
            pending = _Challenge(
                request.command_id,
                request.pulses,
                self._random_bytes(wire.CHALLENGE_LEN),
                now + wire.BOLUS_CHALLENGE_TTL_S,
            )
            self._challenge = pending
        ttl_ms = max(0, int((pending.expires_at - now) * 1000))
        return BolusChallenge(request.request_id, request.command_id, pending.challenge, ttl_ms)

    def _bolus_commit(self, request: Message, live: _LiveSession, now: float) -> Message:
        assert isinstance(request, BolusCommit)
        known = self._known_outcome(request.request_id, request.command_id, request.pulses)
        if known is not None:
            return known
        pending = self._challenge
        # Freshness (S3): the challenge must be the one issued for exactly this
        # id and dose, and still live on the pump's own clock.
        if (
            pending is None
            or not pending.live_for(request.command_id, request.pulses, now)
            or not constant_time_equal(pending.challenge, request.challenge)
        ):
            return Refused(request.request_id, RefusalCode.CHALLENGE_INVALID, 0)
        self._challenge = None
        refusal = self._bolus_refusal(request.request_id, request.pulses, now)
        if refusal is not None:
            return refusal
        record = OutcomeRecord(request.command_id, request.pulses, Outcome.IN_PROGRESS, 0)
        self._ledger.commit(request.command_id, request.pulses, now)
        # Steps 1-3 of the commit order (module docstring), then the reply.
        self._state = replace(self._state.with_outcome(record), ledger=self._ledger.snapshot(now))
        self._commit_state()
        self._audit.append(
            "bolus_started",
            {"pulses": request.pulses, "cmd_id": request.command_id},
            self._ms(now),
        )
        try:
            self._delivery.start_bolus(request.command_id, request.pulses, now)
        except DeliveryRefused:
            record = replace(record, outcome=Outcome.INTERRUPTED)
            self._state = self._state.with_outcome(record)
            self._commit_state()
            return self._outcome_message(request.request_id, record)
        self._persist_delivery()
        self.panel.show(
            "alert",
            f"REMOTE BOLUS {pulses_to_units(request.pulses)} U started - press CANCEL to stop",
        )
        return self._outcome_message(request.request_id, record)

    def _command_query(self, request: Message, live: _LiveSession, now: float) -> Message:
        assert isinstance(request, CommandQuery)
        record = self._state.outcome(request.command_id)
        if record is None:
            # The host is settling an id the pump never committed: void any
            # challenge for it, so the answer "never executed" stays true.
            if self._challenge is not None and self._challenge.command_id == request.command_id:
                self._challenge = None
            return CommandOutcome(request.request_id, request.command_id, Outcome.UNKNOWN, 0, 0)
        return self._outcome_message(request.request_id, record)

    def _bolus_cancel(self, request: Message, live: _LiveSession, now: float) -> Message:
        if self._delivery.active_bolus is None:
            return Refused(request.request_id, RefusalCode.NOTHING_TO_CANCEL, 0)
        ended = self._delivery.cancel_bolus()
        record = self._settle_bolus(ended, now)
        return self._outcome_message(request.request_id, record)

    def _history(self, request: Message, live: _LiveSession, now: float) -> Message:
        assert isinstance(request, HistoryRequest)
        entry, next_seq = self._audit.entry_at_or_after(request.from_seq)
        return History(request.request_id, entry, next_seq)

    def _policy_upload(self, request: Message, live: _LiveSession, now: float) -> Message:
        assert isinstance(request, PolicyUpload)
        prescriber = self._state.prescriber
        if prescriber is None:
            return Refused(request.request_id, RefusalCode.NO_PRESCRIBER, 0)
        try:
            policy = verify_policy(
                request.policy,
                request.signature,
                prescriber_public=prescriber,
                for_pump=self.pump_id,
            )
        except ProtocolError:
            self._audit.append("policy_refused", {"reason": "invalid"}, self._ms(now))
            return Refused(request.request_id, RefusalCode.POLICY_INVALID, 0)
        if policy.version <= self._state.policy.version:
            self._audit.append("policy_refused", {"reason": "rollback"}, self._ms(now))
            return Refused(
                request.request_id, RefusalCode.POLICY_ROLLBACK, self._state.policy.version
            )
        self._ledger.set_policy(policy)
        self._state = replace(self._state, policy=policy)
        self._commit_state()
        self._audit.append("policy", _policy_fields(policy), self._ms(now))
        self.panel.show("info", f"new limits v{policy.version} from prescriber")
        return Ok(request.request_id)

    def _unpair(self, request: Message, live: _LiveSession, now: float) -> Message:
        self._remove_remotes([live.remote_static], now, "remote")
        return Ok(request.request_id)

    # --- delivery ---------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Advance delivery, timeouts and front-panel presses to ``now``."""
        self._now = now
        for button, argument in self.panel.take_presses():
            self._on_button(button, argument, now)
        events = self._delivery.tick(now)
        pulsed = False
        for event in events:
            if isinstance(event, PulsesDelivered):
                pulsed = True
            elif isinstance(event, BolusEnded):
                self._settle_bolus(event, now)
            elif isinstance(event, AlarmRaised):
                self._alarms.add(event.alarm)
                self.panel.show("alarm", event.alarm.name.replace("_", " ").lower())
                if self.mode is not PumpMode.SAFE_STATE:
                    self._audit.append("alarm", {"alarm": event.alarm.name}, self._ms(now))
        if pulsed:
            self._persist_delivery()
        self._expire(now)
        self._alert_rejections(now)
        if self.mode is not PumpMode.SAFE_STATE:
            self._audit.poll(self._ms(now))

    def _settle_bolus(self, ended: BolusEnded, now: float) -> OutcomeRecord:
        """A bolus is over: record its final outcome, then audit it (S10)."""
        record = OutcomeRecord(ended.cmd_id, ended.requested, ended.outcome, ended.delivered)
        if self.mode is PumpMode.SAFE_STATE:
            return record
        stored = self._state.outcome(ended.cmd_id)
        if stored is not None and stored.outcome is not Outcome.IN_PROGRESS:
            # Settled before a power cut (found again at boot): write only what
            # the cut may have lost -- never a second end entry.
            self._audit_bolus_end(stored, now)
            self._persist_delivery()
            return stored
        reserved = self._ledger.reserved
        if reserved is not None and reserved[0] == ended.cmd_id:
            # After a reboot the reservation is gone: the restored ledger then
            # counts all requested pulses, which never undercounts.
            self._ledger.settle(ended.cmd_id, ended.delivered, now)
        self._state = replace(self._state.with_outcome(record), ledger=self._ledger.snapshot(now))
        self._commit_state()
        self._audit_bolus_end(record, now, check_recent=False)
        self._persist_delivery()
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
            self._ms(now),
        )

    def _expire(self, now: float) -> None:
        if self._challenge is not None and now > self._challenge.expires_at:
            self._challenge = None
        if self._session is not None and (
            self._session.session.expired(now)
            or now - self._session.last_used > wire.SESSION_IDLE_TIMEOUT_S
        ):
            self._session = None
        if (
            self._pending is not None
            and now - self._pending.last_used > wire.SESSION_IDLE_TIMEOUT_S
        ):
            self._pending = None
        if self.mode is PumpMode.PAIRING and now > self._pairing_deadline:
            self._pairing_failed(now, "pairing mode timed out")

    # --- front panel ------------------------------------------------------------------

    def _on_button(self, button: Button, argument: bytes, now: float) -> None:
        if self.mode is PumpMode.SAFE_STATE:
            if button is Button.RESET_STORAGE:
                self._reset_storage(now)
            return
        if button is Button.PAIR:
            self._enter_pairing(now)
        elif button is Button.CONFIRM_CODE:
            self._user_confirms(now)
        elif button is Button.REJECT_CODE:
            if self.mode is PumpMode.PAIRING:
                self._pairing_failed(now, "code rejected at the pump")
        elif button in (Button.REMOTE_BOLUS_ON, Button.REMOTE_BOLUS_OFF):
            enabled = button is Button.REMOTE_BOLUS_ON
            self._state = replace(self._state, remote_bolus_enabled=enabled)
            self._commit_state()
            self._audit.append("remote_bolus", {"enabled": enabled}, self._ms(now))
            self.panel.show("info", f"remote bolus {'ON' if enabled else 'OFF'}")
        elif button is Button.UNPAIR_ALL:
            self._remove_remotes(list(self._state.remotes), now, "pump")
        elif button is Button.CANCEL_BOLUS:
            if self._delivery.active_bolus is not None:
                self._settle_bolus(self._delivery.cancel_bolus(), now)
        elif button is Button.SUSPEND:
            for event in self._delivery.suspend():
                if isinstance(event, BolusEnded):
                    self._settle_bolus(event, now)
            self._persist_delivery()
        elif button is Button.RESUME:
            try:
                self._delivery.resume(now)
            except DeliveryRefused:
                self.panel.show("info", "cannot resume now")
            self._persist_delivery()
        elif button is Button.ENROL_PRESCRIBER:
            if len(argument) != wire.ED25519_PUBLIC_LEN:
                self.panel.show("info", "prescriber key not recognised")
                return
            self._state = replace(self._state, prescriber=argument)
            self._commit_state()
            self._audit.append(
                "prescriber_enrolled", {"key_id": sha256(argument)[:8]}, self._ms(now)
            )
            self.panel.show("info", "prescriber key enrolled")
        elif button is Button.CLEAR_ALARMS:
            self._alarms.clear()
            self.panel.show("info", "alarms cleared")

    def _reset_storage(self, now: float) -> None:
        # Formatting destroys every snapshot before erasing, so a power cut
        # part-way can never bring an older state (say, unpaired keys) back.
        self._main_store.format()
        self._delivery_store.format()
        for sector in range(self._flash.sector_count):
            self._flash.erase(sector)
        self.mode = PumpMode.RUNNING
        self._boot(now)

    def _remove_remotes(self, remotes: list[bytes], now: float, by: str) -> None:
        """Unpair: erase the keys and drop their sessions (S11)."""
        kept = tuple(r for r in self._state.remotes if r not in remotes)
        self._state = replace(self._state, remotes=kept)
        self._commit_state()
        self._peers = self._make_peers()
        for remote in remotes:
            self._audit.append("unpaired", {"by": by, "remote": remote[:4].hex()}, self._ms(now))
        if self._session is not None and self._session.remote_static in remotes:
            self._session = None
        if self._pending is not None and self._pending.remote_static in remotes:
            self._pending = None
        self.panel.show("info", f"{len(remotes)} remote(s) unpaired")

    # --- pairing ----------------------------------------------------------------------

    def _lockout_seconds(self) -> float:
        excess = self._state.pairing_failures - config.PAIRING_FAILURES_BEFORE_LOCKOUT
        return float(
            min(config.PAIRING_LOCKOUT_BASE_S * 2 ** max(excess, 0), config.PAIRING_LOCKOUT_MAX_S)
        )

    def _enter_pairing(self, now: float) -> None:
        if now < self._pairing_locked_until:
            self.panel.show("info", f"pairing locked for {int(self._pairing_locked_until - now)} s")
            return
        if len(self._state.remotes) >= wire.MAX_REMOTES:
            self.panel.show("info", "pairing list full: unpair a remote first")
            return
        self._pairing_echo = None
        self.mode = PumpMode.PAIRING
        self._pairing = PairingResponder(self._static, self._random_bytes)
        self._pairing_deadline = now + config.PAIRING_MODE_TIMEOUT_S
        self.panel.show("pairing", "pairing mode: waiting for a remote")

    def _on_pairing(self, record: bytes, now: float) -> None:
        echo = self._pairing_echo
        if echo is not None and echo[0] == record and now <= echo[2]:
            # The remote resent a record whose answer was lost: answer again.
            # (Also just after pairing completed, if PAIR_PUMP_CONFIRM was lost.)
            self._send(echo[1])
            return
        pairing = self._pairing
        if self.mode is not PumpMode.PAIRING or pairing is None:
            self.panel.show("pairing-request", "a remote asks to pair: open Menu > Remote > Pair")
            raise AuthenticationFailed("not in pairing mode")
        kind = record[0]
        try:
            if kind == RecordType.PAIR_REQUEST and pairing.state is PairingState.IDLE:
                self._send_pairing(record, pairing.receive_request(record), now)
            elif kind == RecordType.PAIR_REMOTE_NONCE:
                reply, code = pairing.receive_remote_nonce(record)
                self.panel.code_shown = code
                self.panel.show(
                    "code", f"does the remote show {code[:3]} {code[3:]}? confirm or reject"
                )
                self._send_pairing(record, reply, now)
            elif kind == RecordType.PAIR_REMOTE_CONFIRM:
                pairing.receive_remote_confirm(record)
                self._remote_confirm = record
                if self._pairing_user_confirmed:
                    self._finish_pairing(now)
            elif kind == RecordType.PAIR_REQUEST:
                raise AuthenticationFailed("a pairing is already in progress")
            else:
                raise AuthenticationFailed("unexpected pairing record")
        except ProtocolError:
            if pairing.state is PairingState.FAILED:
                self._pairing_failed(now, "pairing message refused")
            raise

    def _send_pairing(self, received: bytes, reply: bytes, now: float) -> None:
        """Send a pairing reply and remember it, to answer a resent record again."""
        self._pairing_echo = (received, reply, now + config.PAIRING_MODE_TIMEOUT_S)
        self._send(reply)

    def _user_confirms(self, now: float) -> None:
        pairing = self._pairing
        if self.mode is not PumpMode.PAIRING or pairing is None or pairing.code is None:
            return
        self._pairing_user_confirmed = True
        if pairing.remote_confirmed:
            self._finish_pairing(now)

    def _finish_pairing(self, now: float) -> None:
        pairing = self._pairing
        assert pairing is not None
        result, reply = pairing.user_confirmed()
        remotes = tuple(r for r in self._state.remotes if r != result.peer_static)
        # Atomic: the new remote, the reset failure count and remote bolus
        # switched off in one commit (S8).  A new remote never inherits remote
        # bolus: if the user confirmed a code without comparing it, the remote
        # they paired cannot deliver insulin until they also switch it on (S4).
        was_enabled = self._state.remote_bolus_enabled
        self._state = replace(
            self._state,
            remotes=(*remotes, result.peer_static),
            pairing_failures=0,
            remote_bolus_enabled=False,
        )
        self._commit_state()
        self._peers = self._make_peers()
        self._audit.append("paired", {"remote": result.peer_static[:4].hex()}, self._ms(now))
        self._leave_pairing()
        self.panel.show("pairing", "remote paired")
        if was_enabled:
            self.panel.show("info", "remote bolus is now OFF: switch it on again in the menu")
        self._send_pairing(self._remote_confirm, reply, now)

    def _pairing_failed(self, now: float, why: str) -> None:
        self._pairing_echo = None
        failures = self._state.pairing_failures + 1
        self._state = replace(self._state, pairing_failures=failures)
        self._commit_state()
        self._audit.append("pairing_failed", {"reason": why, "failures": failures}, self._ms(now))
        if failures >= config.PAIRING_FAILURES_BEFORE_LOCKOUT:
            self._pairing_locked_until = now + self._lockout_seconds()
        self._leave_pairing()
        self.panel.show("pairing", f"pairing failed: {why}")

    def _leave_pairing(self) -> None:
        self.mode = PumpMode.RUNNING
        self._pairing = None
        self._pairing_user_confirmed = False
        self.panel.code_shown = None

    # --- persistence ------------------------------------------------------------------

    def _commit_state(self) -> None:
        self._main_store.commit(encode_state(self._state))

    def _persist_delivery(self) -> None:
        if self.mode is PumpMode.SAFE_STATE:
            return  # storage is not trusted; the motor's witness is the record
        self._delivery_store.commit(cbor2.dumps(self._delivery.snapshot(), canonical=True))

    @staticmethod
    def _ms(now: float) -> int:
        return int(now * 1000)

    # --- read-only view ---------------------------------------------------------------

    @property
    def pump_id(self) -> bytes:
        return (
            pump_id(x25519_public_bytes(self._static))
            if self.mode is not PumpMode.SAFE_STATE
            else bytes(8)
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


_Handler = Callable[[Pump, Message, _LiveSession, float], Message]
_HANDLERS: dict[type[Message], _Handler] = {
    StatusRequest: Pump._status,
    BolusPrepare: Pump._bolus_prepare,
    BolusCommit: Pump._bolus_commit,
    CommandQuery: Pump._command_query,
    BolusCancel: Pump._bolus_cancel,
    HistoryRequest: Pump._history,
    PolicyUpload: Pump._policy_upload,
    Unpair: Pump._unpair,
}


def _policy_fields(policy: LimitPolicy) -> dict[str, int]:
    return {
        "version": policy.version,
        "max_bolus_pulses": policy.max_bolus_pulses,
        "max_1h_pulses": policy.max_1h_pulses,
        "max_24h_pulses": policy.max_24h_pulses,
    }


def _type_name(kind: int) -> str:
    try:
        return RecordType(kind).name
    except ValueError:
        return f"0x{kind:02x}"
