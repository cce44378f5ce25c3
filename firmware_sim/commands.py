"""The remote's commands: one table, its handlers, and the bolus challenge.

Every request a paired remote can send (SPEC §12.2) has exactly one row in
:data:`COMMAND_TABLE`: the handler that answers it, the pump modes in which
it is taken, and the remote roles that may send it (S14).  Dispatch is a
lookup in that table, nothing else; ``tests/test_command_table.py`` walks
every row in every mode, and checks that this docstring's table is
:data:`COMMAND_TABLE` exactly.

================= ======================== ================== ========
message           handler                  modes              roles
================= ======================== ================== ========
STATUS_REQUEST    Commands.status          RUNNING PAIRING    REMOTE
BOLUS_PREPARE     Commands.bolus_prepare   RUNNING PAIRING    REMOTE
BOLUS_COMMIT      Commands.bolus_commit    RUNNING PAIRING    REMOTE
COMMAND_QUERY     Commands.command_query   RUNNING PAIRING    REMOTE
BOLUS_CANCEL      Commands.bolus_cancel    RUNNING PAIRING    REMOTE
HISTORY_REQUEST   Commands.history         RUNNING PAIRING    REMOTE
POLICY_UPLOAD     Commands.policy_upload   RUNNING PAIRING    REMOTE
UNPAIR            Commands.unpair          RUNNING PAIRING    REMOTE
================= ======================== ================== ========

Theory of operation
-------------------

A request reaches :meth:`Commands.dispatch` only after the link authenticated
and decoded it (firmware_sim/link.py).  The answer is always exactly one
response message:

* a type with no row (a response type sent to the pump), a mode not in the
  row, or a role not in the row: ``refused malformed-request``, decided here
  and nowhere else;
* otherwise whatever the row's handler answers.

No row lists ``SAFE_STATE``: the pump then trusts no key (S8), so no session
exists and no request arrives -- records are dropped unseen, as SPEC §13.3
says.  While the user holds the pump in pairing mode, the paired remotes'
sessions keep working.  Every remote has the role ``REMOTE`` (a person's
remote) today; a new role is a new :class:`Role` member and an edit of the
rows that allow it, so a role no row names can do nothing.

Handlers check and answer; every write they cause goes through the pump
(:class:`PumpCore`), which performs it in the commit order of SPEC §13.3.
The one piece of state kept here is the bolus challenge, in RAM (SPEC §12.3).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final, Protocol

from pumpguard.protocol import (
    BolusChallenge,
    BolusCommit,
    BolusPrepare,
    CommandOutcome,
    CommandQuery,
    History,
    HistoryRequest,
    LimitPolicy,
    Message,
    MessageType,
    Ok,
    Outcome,
    PolicyUpload,
    ProtocolError,
    RandomBytes,
    RefusalCode,
    Refused,
    Status,
    constant_time_equal,
    pulses_to_units,
    verify_policy,
    wire,
)
from pumpguard.protocol.timebase import ms_floor

from .audit import AuditLog
from .delivery import Alarm, BolusEnded, DeliveryEngine, DeliveryState
from .limits import BolusLedger, LimitExceeded
from .panel import FrontPanel
from .state import Known, OutcomeRecord, PersistentState, command_seq

#: Kinds of authenticated refusal counted in the audit log's "refusals"
#: entries (firmware_sim/audit.py, SPEC §13.4).
REFUSAL_OVER_LIMIT: Final = "over_limit"
REFUSAL_BAD_POLICY: Final = "bad_policy"
REFUSAL_OLD_POLICY: Final = "old_policy"


class PumpMode(enum.Enum):
    """The firmware's top-level mode (a column of the command table)."""

    #: Normal operation.
    RUNNING = enum.auto()
    #: The user opened the pairing menu: pairing records are accepted.
    PAIRING = enum.auto()
    #: Storage was corrupt or inconsistent: basal only, remote commands
    #: refused, alarm shown, until the user resets storage at the pump (S8).
    SAFE_STATE = enum.auto()


class Role(enum.Enum):
    """What a paired remote may do, chosen on the pump (S14; a column of the table)."""

    #: A person's remote: every command the pump offers.
    REMOTE = "remote"


@dataclass(frozen=True)
class Origin:
    """Who sent a request: the remote's static public key and its role."""

    remote: bytes
    role: Role


class PumpCore(Protocol):
    """The pump as its command handlers see it (firmware_sim/pump.py).

    Reads, plus the writes the pump performs in its commit order (SPEC §13.3).
    """

    panel: FrontPanel

    @property
    def mode(self) -> PumpMode: ...
    @property
    def persistent(self) -> PersistentState: ...
    @property
    def delivery(self) -> DeliveryEngine: ...
    @property
    def ledger(self) -> BolusLedger: ...
    @property
    def audit(self) -> AuditLog: ...
    @property
    def alarms(self) -> frozenset[Alarm]: ...
    @property
    def pump_id(self) -> bytes: ...
    @property
    def audit_public_key(self) -> bytes: ...
    def start_bolus(
        self, command_id: bytes, pulses: int, now: float, *, remote: bytes
    ) -> OutcomeRecord: ...
    def settle_bolus(self, ended: BolusEnded, now: float) -> OutcomeRecord: ...
    def adopt_policy(self, policy: LimitPolicy, now: float) -> None: ...
    def remove_remotes(self, remotes: list[bytes], now: float, by: str) -> None: ...


@dataclass
class _Challenge:
    remote: bytes
    command_id: bytes
    pulses: int
    challenge: bytes
    expires_at: float

    def live_for(self, remote: bytes, command_id: bytes, pulses: int, now: float) -> bool:
        """Issued to this remote for exactly this id and dose, and not expired
        on the pump's clock."""
        return (
            self.remote == remote
            and self.command_id == command_id
            and self.pulses == pulses
            and now <= self.expires_at
        )


class Commands:
    """Answers authenticated requests through :data:`COMMAND_TABLE`."""

    def __init__(self, pump: PumpCore, random_bytes: RandomBytes) -> None:
        self._pump = pump
        self._random_bytes = random_bytes
        #: The one live bolus challenge (SPEC §12.3), in RAM: a reboot voids it.
        self._challenge: _Challenge | None = None

    def dispatch(self, request: Message, origin: Origin, now: float) -> Message:
        """The response to ``request``: its row's handler's, or ``malformed-request``."""
        row = _ROWS.get(request.TYPE)
        if row is None or self._pump.mode not in row.modes or origin.role not in row.roles:
            return Refused(request.request_id, RefusalCode.MALFORMED_REQUEST, 0)
        return row.handler(self, request, origin, now)

    def forget_challenge(self) -> None:
        """A new session was confirmed: a challenge issued under the old one is void."""
        self._challenge = None

    def expire(self, now: float) -> None:
        if self._challenge is not None and now > self._challenge.expires_at:
            self._challenge = None

    # --- handlers, one per row ------------------------------------------------------

    def status(self, request: Message, origin: Origin, now: float) -> Message:
        pump = self._pump
        state = pump.persistent
        delivery = pump.delivery
        active = delivery.active_bolus
        policy = state.policy
        return Status(
            request_id=request.request_id,
            remote_bolus_enabled=state.remote_bolus_enabled,
            state=delivery.state.value,
            bolus_pulses=delivery.bolus_pulses_delivered,
            basal_pulses=delivery.basal_pulses_delivered,
            reservoir_pulses=delivery.reservoir_pulses,
            active_command_id=b"" if active is None else active.cmd_id,
            active_requested=0 if active is None else active.requested,
            active_delivered=0 if active is None else active.delivered,
            alarms=sum(1 << alarm.value for alarm in pump.alarms),
            limits_version=policy.version,
            max_bolus_pulses=policy.max_bolus_pulses,
            max_1h_pulses=policy.max_1h_pulses,
            max_24h_pulses=policy.max_24h_pulses,
            pump_id=pump.pump_id,
            audit_key=pump.audit_public_key,
            audit_next_seq=pump.audit.next_seq,
        )

    def bolus_prepare(self, request: Message, origin: Origin, now: float) -> Message:
        assert isinstance(request, BolusPrepare)
        known = self._known_outcome(request.request_id, request.command_id, request.pulses, origin)
        if known is not None:
            return known
        if request.pulses == 0:
            return Refused(request.request_id, RefusalCode.MALFORMED_REQUEST, 0)
        refusal = self._bolus_refusal(request.request_id, request.pulses, now)
        if refusal is not None:
            return refusal
        stale = self._stale(request.request_id, request.command_id, origin)
        if stale is not None:
            return stale
        pending = self._challenge
        if pending is None or not pending.live_for(
            origin.remote, request.command_id, request.pulses, now
        ):
            # A repeated prepare (the remote resent it) gets the same live
            # challenge, so whichever answer the remote sees first still works.
            pending = _Challenge(
                origin.remote,
                request.command_id,
                request.pulses,
                self._random_bytes(wire.CHALLENGE_LEN),
                now + wire.BOLUS_CHALLENGE_TTL_S,
            )
            self._challenge = pending
        ttl_ms = max(0, ms_floor(pending.expires_at - now))
        return BolusChallenge(request.request_id, request.command_id, pending.challenge, ttl_ms)

    def bolus_commit(self, request: Message, origin: Origin, now: float) -> Message:
        assert isinstance(request, BolusCommit)
        known = self._known_outcome(request.request_id, request.command_id, request.pulses, origin)
        if known is not None:
            return known
        pending = self._challenge
        # Freshness (S3): the challenge must be the one issued to this remote
        # for exactly this id and dose, and still live on the pump's own clock.
        if (
            pending is None
            or not pending.live_for(origin.remote, request.command_id, request.pulses, now)
            or not constant_time_equal(pending.challenge, request.challenge)
        ):
            return Refused(request.request_id, RefusalCode.CHALLENGE_INVALID, 0)
        self._challenge = None
        refusal = self._bolus_refusal(request.request_id, request.pulses, now)
        if refusal is None:
            # The challenge was issued for a seq above the high-water mark;
            # checked again because only such an id may be committed.
            refusal = self._stale(request.request_id, request.command_id, origin)
        if refusal is not None:
            return refusal
        record = self._pump.start_bolus(
            request.command_id, request.pulses, now, remote=origin.remote
        )
        return self._outcome_message(request.request_id, record)

    def command_query(self, request: Message, origin: Origin, now: float) -> Message:
        assert isinstance(request, CommandQuery)
        found = self._pump.persistent.lookup(origin.remote, request.command_id)
        if isinstance(found, OutcomeRecord):
            return self._outcome_message(request.request_id, found)
        # The host is settling an id the pump holds no record of: void any
        # challenge for it, so that neither answer below can become false.
        if self._challenge is not None and self._challenge.command_id == request.command_id:
            self._challenge = None
        # "Unknown" only when the pump can prove the id never executed; an id
        # it may have executed and forgotten is "evicted" (SPEC §12.4).
        outcome = Outcome.EVICTED if found is Known.EVICTED else Outcome.UNKNOWN
        return CommandOutcome(request.request_id, request.command_id, outcome, 0, 0)

    def bolus_cancel(self, request: Message, origin: Origin, now: float) -> Message:
        delivery = self._pump.delivery
        if delivery.active_bolus is None:
            return Refused(request.request_id, RefusalCode.NOTHING_TO_CANCEL, 0)
        record = self._pump.settle_bolus(delivery.cancel_bolus(), now)
        return self._outcome_message(request.request_id, record)

    def history(self, request: Message, origin: Origin, now: float) -> Message:
        assert isinstance(request, HistoryRequest)
        entry, next_seq = self._pump.audit.entry_at_or_after(request.from_seq)
        return History(request.request_id, entry, next_seq)

    def policy_upload(self, request: Message, origin: Origin, now: float) -> Message:
        assert isinstance(request, PolicyUpload)
        pump = self._pump
        state = pump.persistent
        prescriber = state.prescriber
        if prescriber is None:
            return Refused(request.request_id, RefusalCode.NO_PRESCRIBER, 0)
        try:
            policy = verify_policy(
                request.policy,
                request.signature,
                prescriber_public=prescriber,
                for_pump=pump.pump_id,
            )
        except ProtocolError:
            pump.audit.note_refusal(REFUSAL_BAD_POLICY, ms_floor(now))
            return Refused(request.request_id, RefusalCode.POLICY_INVALID, 0)
        if policy.version <= state.policy.version:
            pump.audit.note_refusal(REFUSAL_OLD_POLICY, ms_floor(now))
            return Refused(request.request_id, RefusalCode.POLICY_ROLLBACK, state.policy.version)
        pump.adopt_policy(policy, now)
        return Ok(request.request_id)

    def unpair(self, request: Message, origin: Origin, now: float) -> Message:
        self._pump.remove_remotes([origin.remote], now, "remote")
        return Ok(request.request_id)

    # --- shared by the bolus handlers -----------------------------------------------

    def _known_outcome(
        self, request_id: int, command_id: bytes, pulses: int, origin: Origin
    ) -> Message | None:
        """Exactly once (S7): a known id answers with its stored outcome, or a
        conflict; an id the pump may have executed and forgotten answers
        *evicted* and is never executed (SPEC §12.4)."""
        state = self._pump.persistent
        if state.outcome_tables.table(origin.remote) is None:
            # A remote with no table has committed nothing the pump still
            # knows of.  (If tables were ever dropped, its queries answer
            # "evicted"; a new command is still taken: the remote settles
            # every journaled id by query before it sends a new one.)
            return None
        found = state.lookup(origin.remote, command_id)
        if found is Known.EVICTED:
            return CommandOutcome(request_id, command_id, Outcome.EVICTED, 0, 0)
        if not isinstance(found, OutcomeRecord):
            return None
        if found.requested != pulses:
            return Refused(request_id, RefusalCode.COMMAND_ID_CONFLICT, 0)
        return self._outcome_message(request_id, found)

    def _stale(self, request_id: int, command_id: bytes, origin: Origin) -> Refused | None:
        """Refuse an id whose seq is not above the remote's high-water mark.

        Only such ids are committed, so a remote's table holds its ids in seq
        order and the pump can tell "never seen" from "forgotten" (SPEC §12.4).
        ``detail`` tells the remote where its sequence must continue.
        """
        table = self._pump.persistent.outcome_tables.table(origin.remote)
        high_water = 0 if table is None else table.high_water
        if command_seq(command_id) > high_water:
            return None
        return Refused(request_id, RefusalCode.COMMAND_ID_STALE, min(high_water, wire.UINT32_MAX))

    def _outcome_message(self, request_id: int, record: OutcomeRecord) -> CommandOutcome:
        delivered = record.delivered
        active = self._pump.delivery.active_bolus
        if active is not None and active.cmd_id == record.command_id:
            delivered = active.delivered
        return CommandOutcome(
            request_id, record.command_id, record.outcome, record.requested, delivered
        )

    def _bolus_refusal(self, request_id: int, pulses: int, now: float) -> Refused | None:
        pump = self._pump
        if not pump.persistent.remote_bolus_enabled:
            pump.panel.show("alert", "remote bolus refused: remote bolus is off")
            return Refused(request_id, RefusalCode.REMOTE_BOLUS_DISABLED, 0)
        try:
            pump.ledger.check(pulses, now)
        except LimitExceeded as exc:
            units = pulses_to_units(pulses)
            pump.panel.show("alert", f"remote bolus of {units} U refused: over {exc.which} limit")
            # Counted, not one entry each: a paired remote's refusals must not
            # flood the log or wear the flash (SPEC §13.4).
            pump.audit.note_refusal(REFUSAL_OVER_LIMIT, ms_floor(now))
            return Refused(request_id, exc.which.refusal, exc.allowed_pulses)
        delivery = pump.delivery
        if delivery.active_bolus is not None:
            return Refused(request_id, RefusalCode.BUSY, 0)
        if pulses > delivery.reservoir_pulses or delivery.state is not DeliveryState.IDLE:
            return Refused(request_id, RefusalCode.DELIVERY_UNAVAILABLE, 0)
        return None


# --- The table ------------------------------------------------------------------------

Handler = Callable[[Commands, Message, Origin, float], Message]


@dataclass(frozen=True)
class CommandRule:
    """One row of :data:`COMMAND_TABLE`."""

    message: MessageType
    handler: Handler
    #: The pump modes in which the request is taken.
    modes: frozenset[PumpMode]
    #: The remote roles that may send it.
    roles: frozenset[Role]


#: A paired remote's session keeps working while the user pairs another.
_RUNNING_OR_PAIRING: Final = frozenset({PumpMode.RUNNING, PumpMode.PAIRING})
_REMOTE: Final = frozenset({Role.REMOTE})

#: Every request the pump takes (SPEC §12.2), one row each.
COMMAND_TABLE: Final[tuple[CommandRule, ...]] = (
    CommandRule(MessageType.STATUS_REQUEST, Commands.status, _RUNNING_OR_PAIRING, _REMOTE),
    CommandRule(MessageType.BOLUS_PREPARE, Commands.bolus_prepare, _RUNNING_OR_PAIRING, _REMOTE),
    CommandRule(MessageType.BOLUS_COMMIT, Commands.bolus_commit, _RUNNING_OR_PAIRING, _REMOTE),
    CommandRule(MessageType.COMMAND_QUERY, Commands.command_query, _RUNNING_OR_PAIRING, _REMOTE),
    CommandRule(MessageType.BOLUS_CANCEL, Commands.bolus_cancel, _RUNNING_OR_PAIRING, _REMOTE),
    CommandRule(MessageType.HISTORY_REQUEST, Commands.history, _RUNNING_OR_PAIRING, _REMOTE),
    CommandRule(MessageType.POLICY_UPLOAD, Commands.policy_upload, _RUNNING_OR_PAIRING, _REMOTE),
    CommandRule(MessageType.UNPAIR, Commands.unpair, _RUNNING_OR_PAIRING, _REMOTE),
)

_ROWS: Final[Mapping[MessageType, CommandRule]] = {row.message: row for row in COMMAND_TABLE}
if len(_ROWS) != len(COMMAND_TABLE):
    raise AssertionError("COMMAND_TABLE has two rows for one message type")
