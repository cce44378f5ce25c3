"""The remote's client library: pair, connect, and command a pump (SPEC §9, §12).

A :class:`RemoteClient` speaks to one pump over a
:class:`~host.transport.RecordChannel`.  Sessions are set up and renewed
transparently.  Every call ends in one of three ways, each its own type:

* it returns -- the pump did it (or, for a bolus, the final
  :class:`BolusResult` says what was delivered);
* :class:`PumpRefused` -- the pump said no, authenticated, with its reason;
* :class:`OutcomeUnknown` -- the link failed after a bolus may have been
  committed; the command id is in the journal and :meth:`settle_pending`
  (run by every ``pumpctl`` start) finds out what happened.  A new bolus is
  never sent while an old one is unsettled (S7).
* :class:`OutcomeEvicted` (an :class:`OutcomeUnknown`) -- the pump no longer
  holds the outcome of a journaled bolus (SPEC §12.4): it may have been
  delivered.  It stays unsettled until :meth:`settle_from_history` finds it
  in the pump's audit log (``pumpctl history``).

Link failures before anything could have happened raise :class:`LinkDown`.

Requests are typed message objects from :mod:`pumpguard.protocol`, built
with :data:`UNASSIGNED_ID` as their request id: :meth:`RemoteClient.request`
numbers them itself, so that each response can be matched to its request::

    client.request(CommandQuery(UNASSIGNED_ID, command_id))
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, TypeVar

from pumpguard.protocol import (
    AuthenticationFailed,
    BolusCancel,
    BolusChallenge,
    BolusCommit,
    BolusPrepare,
    CommandOutcome,
    CommandQuery,
    HandshakeInitiator,
    History,
    HistoryRequest,
    Message,
    Ok,
    Outcome,
    PairingInitiator,
    PairingResult,
    PolicyUpload,
    ProtocolError,
    RandomBytes,
    RecordType,
    RefusalCode,
    Refused,
    Request,
    SecureSession,
    Status,
    StatusRequest,
    Unpair,
    audit_entry,
    decode_message,
    encode_message,
    paired_peer,
    pulses_to_units,
    pump_id,
    wire,
)

from .journal import Journal, SettledCommand
from .keystore import KeyStore
from .transport import RecordChannel

log = logging.getLogger("pumpguard.remote")

#: How long to wait for one reply before sending again.  A record crosses a
#: 115200-baud link in at most ~25 ms and the pump answers at once, so a
#: reply not here within a second was lost; waiting longer only slows recovery.
REPLY_TIMEOUT_S: Final = 1.0
#: Attempts per request (same request, resealed under a new counter), and per
#: handshake.  Four one-second tries ride out a burst of lost records; after
#: them the session is renewed once, so a dead link is reported in ~8 s.
ATTEMPTS: Final = 4
#: How often a bolus in progress is polled for progress.  The pump delivers a
#: pulse every 2 s, so progress shows within a quarter second of each, for
#: four short exchanges a second on the link.
POLL_INTERVAL_S: Final = 0.25
#: How long pairing waits for the user at the pump.  The pump leaves pairing
#: mode after PAIRING_MODE_TIMEOUT_S (120 s, SPEC §9.5); the margin covers a
#: user who opens pairing mode a little after the remote starts asking.
PAIRING_WAIT_S: Final = 150.0
#: How often a pairing record is sent again while no answer comes.  The pump
#: drops pairing records until the user opens pairing mode, so the request is
#: repeated; once a second makes the pump answer within a second of opening.
PAIRING_RESEND_S: Final = 1.0
#: How long the pump's nonce may take.  The pump answers it without waiting
#: for the user, so this only has to cover a lossy link (ten resends).
PAIRING_NONCE_WAIT_S: Final = 10.0
#: How often the confirmation is sent again.  The pump answers it only once its
#: user has compared the codes, which takes seconds; it answers a duplicate
#: with the same reply (SPEC §9.5), so resending is safe, and every 2 s is
#: prompt enough for a person while halving the records sent during the wait.
PAIRING_CONFIRM_RESEND_S: Final = 2.0
#: Most audit entries :meth:`RemoteClient.history` fetches by default, one
#: exchange each.  The pump's audit ring (24 sectors of 4 KiB, SPEC §13.1)
#: holds at most ~820 even of the smallest entries, so the whole log is read;
#: the bound stops a pump that never says "no more" from looping the client.
HISTORY_MAX_ENTRIES: Final = 1000
#: The request id to build a message with for :meth:`RemoteClient.request`,
#: which replaces it with the client's next one.
UNASSIGNED_ID: Final = 0
#: Random bytes that pick the first request id: enough to reach every id up
#: to ``wire.MAX_REQUEST_ID``, so two clients in turn are unlikely to reuse ids.
_REQUEST_ID_SEED_LEN: Final = (wire.MAX_REQUEST_ID.bit_length() + 7) // 8

_Response = TypeVar("_Response", bound=Message)

_REFUSAL_TEXT = {
    RefusalCode.MALFORMED_REQUEST: "the pump could not parse the request",
    RefusalCode.REMOTE_BOLUS_DISABLED: "remote bolus is switched off on the pump",
    RefusalCode.OVER_SINGLE_LIMIT: "over the pump's single-bolus limit",
    RefusalCode.OVER_1H_LIMIT: "over the pump's 1-hour limit",
    RefusalCode.OVER_24H_LIMIT: "over the pump's 24-hour limit",
    RefusalCode.CHALLENGE_INVALID: "the bolus challenge expired; nothing was delivered",
    RefusalCode.COMMAND_ID_CONFLICT: "command id reused with different parameters",
    RefusalCode.BUSY: "another bolus is in progress",
    RefusalCode.DELIVERY_UNAVAILABLE: "the pump cannot deliver now (suspended, alarm or reservoir)",
    RefusalCode.POLICY_INVALID: "the limits policy is not signed by the enrolled prescriber",
    RefusalCode.POLICY_ROLLBACK: "the limits policy is not newer than the pump's",
    RefusalCode.NO_PRESCRIBER: "no prescriber key is enrolled on the pump",
    RefusalCode.SAFE_STATE: "the pump is in its safe state",
    RefusalCode.NOTHING_TO_CANCEL: "no bolus is in progress",
}
_LIMIT_CODES = frozenset(
    {RefusalCode.OVER_SINGLE_LIMIT, RefusalCode.OVER_1H_LIMIT, RefusalCode.OVER_24H_LIMIT}
)


class ClientError(Exception):
    """Base of the client's errors; ``exit_status`` is pumpctl's (BRIEF contract)."""

    exit_status = 2


class LinkDown(ClientError):
    """No answer from the pump: nothing was done that needs settling."""


class NotPaired(ClientError):
    """The keys directory holds no pairing."""


class PumpRefused(ClientError):
    """The pump refused, authenticated; the reason is in the message."""

    exit_status = 3

    def __init__(self, refusal: Refused) -> None:
        self.code = refusal.code
        self.detail = refusal.detail
        text = _REFUSAL_TEXT.get(refusal.code, refusal.code.name)
        if refusal.code in _LIMIT_CODES:
            text += f" (at most {pulses_to_units(refusal.detail)} U allowed now)"
        super().__init__(f"refused by the pump: {text}")


class OutcomeUnknown(ClientError):
    """A bolus may or may not have started; run any pumpctl command to settle it."""

    exit_status = 4

    def __init__(self, command_id: bytes, why: str) -> None:
        self.command_id = command_id
        super().__init__(
            f"outcome of bolus {command_id.hex()[:8]} unknown ({why}); it is journaled: "
            "run 'pumpctl status' when the link is back to settle it - do not bolus again"
        )


class OutcomeEvicted(OutcomeUnknown):
    """The pump no longer remembers a journaled bolus: settle it from its audit log."""

    def __init__(self, command_id: bytes) -> None:
        self.command_id = command_id
        ClientError.__init__(
            self,
            f"the pump no longer remembers the outcome of bolus {command_id.hex()[:8]} "
            "(it may have been delivered): run 'pumpctl history' to settle it from the "
            "pump's audit log - do not bolus again until then",
        )


#: Audit events that end a bolus (firmware_sim/pump.py), and the outcome each records.
_END_EVENTS: Final = {
    "bolus_" + outcome.name.lower(): outcome
    for outcome in (Outcome.DELIVERED, Outcome.CANCELLED, Outcome.INTERRUPTED)
}


@dataclass(frozen=True)
class BolusResult:
    command_id: bytes
    outcome: Outcome
    requested_pulses: int
    delivered_pulses: int


ProgressCallback = Callable[[int, int], None]
#: Called with each journaled command :meth:`RemoteClient.settle_pending` settles.
SettledCallback = Callable[[SettledCommand], None]


def _expect(response: Message, kind: type[_Response], what: str) -> _Response:
    """``response`` as a ``kind``, or :class:`LinkDown` naming ``what`` was asked."""
    if not isinstance(response, kind):
        raise LinkDown(f"unexpected response to {what}")
    return response


class RemoteClient:
    """Commands one pump.  Not thread-safe; one client per link.

    Args:
        channel: framed records over a link.
        keys: the ``--keys`` directory.
        journal: pending bolus commands, in the same directory.
        clock, sleep, random_bytes: injected for tests.
    """

    def __init__(
        self,
        channel: RecordChannel,
        keys: KeyStore,
        journal: Journal,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        random_bytes: RandomBytes = os.urandom,
        reply_timeout: float = REPLY_TIMEOUT_S,
    ) -> None:
        self._channel = channel
        self._keys = keys
        self._journal = journal
        self._clock = clock
        self._sleep = sleep
        self._random_bytes = random_bytes
        self._reply_timeout = reply_timeout
        self._session: SecureSession | None = None
        self._request_id = int.from_bytes(random_bytes(_REQUEST_ID_SEED_LEN), "big")

    # --- pairing ----------------------------------------------------------------------

    def pair(self, confirm_code: Callable[[str], bool]) -> PairingResult:
        """Pair with the pump in front of the user (SPEC §9).

        ``confirm_code(code)`` shows the code and returns True if the user
        says the pump shows the same.  The pump must be put in pairing mode
        from its own menu; until it is, the request is repeated.

        Raises:
            LinkDown: the pump never answered.
            ClientError: the codes did not match, or the pump refused.
        """
        static = self._keys.remote_static(self._random_bytes)
        initiator = PairingInitiator(static, self._random_bytes)
        request = initiator.start()
        try:
            commit = self._exchange_raw(
                request, RecordType.PAIR_COMMIT, PAIRING_WAIT_S, resend=PAIRING_RESEND_S
            )
            nonce_reply = initiator.receive_commit(commit)
            pump_nonce = self._exchange_raw(
                nonce_reply,
                RecordType.PAIR_PUMP_NONCE,
                PAIRING_NONCE_WAIT_S,
                resend=PAIRING_RESEND_S,
            )
            code = initiator.receive_pump_nonce(pump_nonce)
            if not confirm_code(code):
                initiator.abort()
                raise ClientError("pairing cancelled: the codes did not match")
            confirm = initiator.confirm()
            reply = self._exchange_raw(
                confirm,
                RecordType.PAIR_PUMP_CONFIRM,
                PAIRING_WAIT_S,
                resend=PAIRING_CONFIRM_RESEND_S,
            )
            result = initiator.receive_pump_confirm(reply)
        except ProtocolError as exc:
            raise ClientError(
                f"pairing refused: the pump's answer did not verify ({type(exc).__name__}); "
                "nothing was stored"
            ) from None
        self._keys.save_pairing(result.peer_static, pump_id(result.peer_static))
        self._session = None
        return result

    def _exchange_raw(
        self, record: bytes, expect: RecordType, deadline_s: float, *, resend: float
    ) -> bytes:
        """Send ``record`` until a record of type ``expect`` comes back (pairing only)."""
        deadline = self._clock() + deadline_s
        while self._clock() < deadline:
            self._channel.send(record)
            until = min(deadline, self._clock() + resend)
            while self._clock() < until:
                reply = self._channel.receive(timeout=max(0.0, until - self._clock()))
                if reply is not None and reply[:1] == bytes((expect,)):
                    return reply
        raise LinkDown(f"no {expect.name} from the pump in {deadline_s:.0f} s")

    # --- session ----------------------------------------------------------------------

    def connect(self) -> None:
        """Run a handshake now (normally done on demand)."""
        pairing = self._keys.pairing()
        if pairing is None:
            raise NotPaired(f"no pump paired in {self._keys.path}: run 'pumpctl pair' first")
        static = self._keys.remote_static(self._random_bytes)
        peer = paired_peer(static, pairing.pump_static, local_is_remote=True)
        for _ in range(ATTEMPTS):
            initiator = HandshakeInitiator(
                local_static=static, peer=peer, random_bytes=self._random_bytes
            )
            self._channel.send(initiator.start())
            deadline = self._clock() + self._reply_timeout
            while self._clock() < deadline:
                reply = self._channel.receive(timeout=max(0.0, deadline - self._clock()))
                if reply is None or reply[:1] != bytes((RecordType.HANDSHAKE_RESP,)):
                    continue
                try:
                    keys = initiator.finish(reply)
                except ProtocolError as exc:
                    log.info("handshake reply refused: %s", type(exc).__name__)
                    continue
                self._session = SecureSession(keys, established_at=self._clock())
                log.info("session %s established", keys.session_hash[:4].hex())
                return
        raise LinkDown("the pump does not answer the handshake (not paired with it, or no link)")

    def _session_for_use(self) -> SecureSession:
        session = self._session
        if session is None or session.needs_rekey(self._clock()):
            self.connect()
            session = self._session
        assert session is not None
        return session

    def _next_request_id(self) -> int:
        self._request_id = (self._request_id + 1) % (wire.MAX_REQUEST_ID + 1)
        return self._request_id

    def request(self, message: Request) -> Message:
        """Send ``message`` and return the pump's authenticated response.

        Build ``message`` with :data:`UNASSIGNED_ID` as its request id; it is
        sent under the client's next request id.  The request is resent,
        resealed under a fresh counter, until a response with that id
        arrives; after the attempts run out the session is renewed once and
        the whole exchange retried.

        Raises:
            ValueError: ``message`` carries a request id of its own (a caller bug).
            LinkDown: no response.
            PumpRefused: the response is a refusal.
        """
        if message.request_id != UNASSIGNED_ID:
            raise ValueError("build requests with UNASSIGNED_ID: the client numbers them")
        message = dataclasses.replace(message, request_id=self._next_request_id())
        plaintext = encode_message(message)
        for renew in (False, True):
            if renew:
                self._session = None
            session = self._session_for_use()
            for _ in range(ATTEMPTS):
                self._channel.send(session.seal(plaintext))
                response = self._await_response(session, message.request_id)
                if response is not None:
                    if isinstance(response, Refused):
                        raise PumpRefused(response)
                    return response
        raise LinkDown("no response from the pump")

    def _await_response(self, session: SecureSession, request_id: int) -> Message | None:
        deadline = self._clock() + self._reply_timeout
        while self._clock() < deadline:
            record = self._channel.receive(timeout=max(0.0, deadline - self._clock()))
            if record is None:
                continue
            if record[:1] != bytes((RecordType.DATA,)):
                continue
            try:
                response = decode_message(session.open(record))
            except ProtocolError as exc:
                log.info("response refused: %s", type(exc).__name__)
                continue
            if response.request_id == request_id:
                return response
        return None

    # --- commands ---------------------------------------------------------------------

    def status(self) -> Status:
        response = _expect(self.request(StatusRequest(UNASSIGNED_ID)), Status, "status")
        pairing = self._keys.pairing()
        if pairing is not None and pairing.audit_public is None:
            self._keys.save_audit_key(response.audit_key)
        return response

    def bolus(self, pulses: int, progress: ProgressCallback | None = None) -> BolusResult:
        """Deliver ``pulses`` exactly once and wait until the pump settles it.

        Raises:
            PumpRefused: refused (over limit, remote bolus off, ...); nothing delivered.
            OutcomeUnknown: the link failed after the bolus may have started.
            ClientError: an earlier bolus is still unsettled.
        """
        unsettled = self.settle_pending()
        if unsettled:
            self._raise_unsettled(unsettled)
        # Reach the pump before journaling: a bolus that cannot even be sent
        # (not paired, unreadable key, dead link) leaves nothing to settle.
        self._session_for_use()
        for attempt in range(2):
            # Journaled before the first byte is sent: a crash from here on is
            # settled later.  The id carries the journal's next seq (SPEC §12.4).
            command_id = self._journal.new_command(pulses, self._random_bytes).command_id
            try:
                first = self._prepare_and_commit(command_id, pulses)
                final = self._follow(command_id, first, progress)
            except PumpRefused as refusal:
                # Refused: the pump never committed this id, so nothing was delivered.
                self._journal.settle(command_id, Outcome.UNKNOWN, 0)
                if refusal.code is RefusalCode.COMMAND_ID_STALE and attempt == 0:
                    # The pump has committed a later seq of ours than the
                    # journal knows (journal restored or replaced): continue
                    # after it, once.
                    self._journal.advance_seq(refusal.detail + 1)
                    continue
                raise refusal from None
            except LinkDown as exc:
                raise OutcomeUnknown(command_id, str(exc)) from None
            if final.outcome is Outcome.EVICTED:
                # A pump that forgot an id it just answered for: never "not delivered".
                self._journal.mark_evicted(command_id)
                raise OutcomeEvicted(command_id)
            self._settle(command_id, final)
            return BolusResult(command_id, final.outcome, final.requested, final.delivered)
        raise AssertionError("unreachable: the second attempt returns or raises")

    def _raise_unsettled(self, unsettled: list[bytes]) -> None:
        """Refuse a new bolus while ``unsettled`` commands are: say how to settle the first."""
        evicted = {p.command_id for p in self._journal.pending() if p.evicted}
        for command_id in unsettled:
            if command_id in evicted:
                raise OutcomeEvicted(command_id)
        raise OutcomeUnknown(unsettled[0], "an earlier bolus is still unsettled")

    def _prepare_and_commit(self, command_id: bytes, pulses: int) -> CommandOutcome:
        """Challenge, then commit.  A challenge that expired in transit is
        fetched again once: its refusal proves nothing was delivered."""
        try:
            return self._challenge_and_commit(command_id, pulses)
        except PumpRefused as refusal:
            if refusal.code is not RefusalCode.CHALLENGE_INVALID:
                raise
        return self._challenge_and_commit(command_id, pulses)

    def _challenge_and_commit(self, command_id: bytes, pulses: int) -> CommandOutcome:
        response = self.request(BolusPrepare(UNASSIGNED_ID, command_id, pulses))
        if isinstance(response, BolusChallenge):  # a known id answers with its outcome instead
            response = self.request(
                BolusCommit(UNASSIGNED_ID, command_id, pulses, response.challenge)
            )
        return _expect(response, CommandOutcome, "a bolus")

    def _follow(
        self, command_id: bytes, outcome: CommandOutcome, progress: ProgressCallback | None
    ) -> CommandOutcome:
        """Poll until the bolus is over and return its final outcome; report
        progress as the pump counts it."""
        while outcome.outcome is Outcome.IN_PROGRESS:
            if progress is not None:
                progress(outcome.delivered, outcome.requested)
            self._sleep(POLL_INTERVAL_S)
            query = CommandQuery(UNASSIGNED_ID, command_id)
            outcome = _expect(self.request(query), CommandOutcome, "a query")
        if progress is not None:
            progress(outcome.delivered, outcome.requested)
        return outcome

    def _settle(self, command_id: bytes, final: CommandOutcome) -> SettledCommand:
        """Journal the pump's final answer about the pending ``command_id``
        (never EVICTED: that one stays pending, see :meth:`settle_pending`)."""
        # UNKNOWN: the pump never committed it (and voided any challenge for it
        # while answering), so none of it was delivered.
        delivered = 0 if final.outcome is Outcome.UNKNOWN else final.delivered
        return self._journal.settle(command_id, final.outcome, delivered)

    def settle_pending(
        self, *, follow: bool = True, on_settled: SettledCallback | None = None
    ) -> list[bytes]:
        """Ask the pump about every journaled bolus; return the ids still unknown.

        The one place the journal's pending commands are settled: every
        ``pumpctl`` start and every :meth:`bolus` run it first.

        A bolus the pump never committed is settled as not delivered: the
        pump voids any challenge for it while answering, so it can no
        longer start.  One still in progress is followed to its end, or,
        with ``follow=False``, left pending (and not counted as unknown) so
        that the caller can, for example, cancel it first.  One the pump
        answers *evicted* for (it no longer holds the outcome: possibly
        delivered) is marked so in the journal and stays unknown until
        :meth:`settle_from_history`.  ``on_settled`` is called with each
        command as it is settled.
        """
        unknown = []
        for pending in self._journal.pending():
            if pending.evicted:
                # The pump's answer cannot change: only its log can settle it.
                unknown.append(pending.command_id)
                continue
            try:
                response = self.request(CommandQuery(UNASSIGNED_ID, pending.command_id))
            except (LinkDown, NotPaired):
                unknown.append(pending.command_id)
                continue
            if not isinstance(response, CommandOutcome):
                unknown.append(pending.command_id)
                continue
            if response.outcome is Outcome.IN_PROGRESS:
                if not follow:
                    continue
                response = self._follow(pending.command_id, response, None)
            if response.outcome is Outcome.EVICTED:
                self._journal.mark_evicted(pending.command_id)
                unknown.append(pending.command_id)
                continue
            settled = self._settle(pending.command_id, response)
            if on_settled is not None:
                on_settled(settled)
        return unknown

    def settle_from_history(
        self, entries: Sequence[audit_entry.AuditEntry]
    ) -> list[SettledCommand]:
        """Settle every journaled bolus the pump answered *evicted* for, from
        its verified audit log (``entries``, e.g. :meth:`verified_history`).

        A bolus whose end entry (``bolus_delivered``, ``bolus_cancelled``,
        ``bolus_interrupted``) is in the log is settled with that outcome and
        the pulses it records.  One the log no longer holds either is settled
        as ``EVICTED``: unknown, possibly delivered -- never "not delivered".

        Returns:
            The commands settled, in journal order.
        """
        ends: dict[bytes, tuple[Outcome, int]] = {}
        for entry in entries:
            outcome = _END_EVENTS.get(entry.event)
            cmd_id = entry.fields.get("cmd_id")
            pulses = entry.fields.get("pulses")
            if outcome is not None and isinstance(cmd_id, bytes) and type(pulses) is int:
                ends[cmd_id] = (outcome, pulses)
        settled = []
        for pending in self._journal.pending():
            if not pending.evicted:
                continue
            outcome, delivered = ends.get(pending.command_id, (Outcome.EVICTED, 0))
            settled.append(self._journal.settle(pending.command_id, outcome, max(0, delivered)))
        return settled

    def cancel(self) -> CommandOutcome:
        return _expect(self.request(BolusCancel(UNASSIGNED_ID)), CommandOutcome, "cancel")

    def history(self, from_seq: int = 0, limit: int = HISTORY_MAX_ENTRIES) -> list[bytes]:
        """Signed audit entries from ``from_seq`` on (verify with host.audit)."""
        entries: list[bytes] = []
        seq = from_seq
        while len(entries) < limit:
            request = HistoryRequest(UNASSIGNED_ID, seq)
            response = _expect(self.request(request), History, "history")
            if not response.entry:
                break
            entries.append(response.entry)
            seq = response.next_seq
        return entries

    def verified_history(self) -> tuple[audit_entry.AuditEntry, ...]:
        """The whole retained audit log, verified.

        The signatures are checked with the pump's audit key, learned over
        the authenticated session and pinned in the keys directory on first
        use; a pump presenting a different key later is refused.

        Raises:
            ClientError: the log does not verify, or the pump's key changed.
        """
        pairing = self._keys.pairing()
        pinned = None if pairing is None else pairing.audit_public
        current = self.status().audit_key  # status() pins the key on first use
        if pinned is not None and pinned != current:
            raise ClientError("the pump's audit key changed since it was pinned: refusing its log")
        try:
            return audit_entry.verify_entries(self.history(), current).entries
        except audit_entry.AuditVerificationError as exc:
            raise ClientError(f"the pump's audit log does not verify: {exc}") from None

    def pump_id_hex(self) -> str:
        pairing = self._keys.pairing()
        return "" if pairing is None else pairing.pump_id.hex()

    def upload_policy(self, policy: bytes, signature: bytes) -> None:
        _expect(self.request(PolicyUpload(UNASSIGNED_ID, policy, signature)), Ok, "policy upload")

    def unpair(self) -> None:
        """Ask the pump to erase our key, then erase ours (S11).

        Our key is erased even if the pump's answer is lost: either way this
        remote can no longer command the pump.
        """
        if not self._keys.key_path.exists() and self._keys.pairing() is not None:
            # Half unpaired (our key already gone): finish the job here.
            self._keys.erase_pairing()
            raise LinkDown(
                "this remote's key was already gone; its pairing is erased here now - "
                "unpair it on the pump's menu too"
            )
        try:
            self.request(Unpair(UNASSIGNED_ID))
        except (LinkDown, AuthenticationFailed):
            self._keys.erase_pairing()
            raise LinkDown(
                "the pump did not confirm; this remote's keys are erased anyway - "
                "unpair it on the pump's menu too"
            ) from None
        self._keys.erase_pairing()
        self._session = None
