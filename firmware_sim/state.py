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
        outcomes: outcome-tables,          ; per remote (SPEC §12.4)
        ledger: [* [age-ms: uint, pulses: uint]],
        pairing-failures: uint,
        boot-count: uint,
    ]
    outcome-tables = [
        tables: [* remote-outcomes],       ; least recently written first, <= MAX_OUTCOME_TABLES
        tables-dropped: bool,              ; a tombstone was ever dropped (see below)
    ]
    remote-outcomes = [
        remote: bstr .size 32,             ; the remote's static public key
        high-water: uint,                  ; highest command seq ever committed, 0 = none
        forgotten-through: uint,           ; highest command seq evicted, 0 = none
        records: [* outcome-record],       ; seq ascending, <= OUTCOME_CAPACITY_PER_REMOTE
    ]
    outcome-record = [command-id: bstr .size 16, requested: uint, outcome: uint, delivered: uint]

Outcome tables (SPEC §12.4)
---------------------------

Each remote's outcomes live in its own table, so one remote's commands never
evict another's.  A command id starts with its remote's sequence number
(``wire.COMMAND_SEQ_LEN`` bytes, big-endian); the pump commits only ids whose
seq is above the remote's ``high-water``, so a table holds its remote's
committed ids in seq order and evicts the lowest first, raising
``forgotten-through``.  :meth:`PersistentState.lookup` then classifies any id:

* held: its record;
* seq above ``high-water``: never committed (*unknown*);
* seq at or below ``forgotten-through``: may have been committed and
  forgotten (*evicted*);
* otherwise (seq 0, or a seq in between whose id is not held): never
  committed, and it never will be, since its seq is not above ``high-water``.

An unpaired remote's table is kept whole while room allows (a remote unpaired
at the pump and paired again with the same key then still learns its
outcomes); when more than ``MAX_REMOTES + 1`` tables would hold records, the
least recently written unpaired one becomes a tombstone (records dropped,
``forgotten-through`` raised to ``high-water``), so such a remote hears
*evicted*, never *unknown*, for what it sent before.  At most
``MAX_OUTCOME_TABLES`` tables are kept; when a tombstone must go,
``tables-dropped`` is set for good, and from then on a remote with no table
hears *evicted* for every query: the pump can no longer prove it never saw
the id.  Only tables of paired remotes, plus one of an unpaired remote whose
bolus is still in progress, hold records, so the state stays within one
snapshot.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from typing import Final

import cbor2

from pumpguard.protocol import LimitPolicy, Outcome, wire

FORMAT: Final = 1
#: Outcomes kept per remote.  A remote settles each bolus before it sends the
#: next (S7), so this is far beyond its retry horizon; the tables of all
#: remotes together stay within the snapshot (MAX_REMOTES + 1 tables hold
#: records, see the module docstring).
OUTCOME_CAPACITY_PER_REMOTE: Final = 16
#: Tables kept: one per paired remote, plus tombstones of unpaired ones.
MAX_OUTCOME_TABLES: Final = 2 * wire.MAX_REMOTES + 4
#: Tables that may hold records at once (paired remotes, and one unpaired
#: remote whose bolus is still in progress).
_MAX_TABLES_WITH_RECORDS: Final = wire.MAX_REMOTES + 1


class StateInvalid(Exception):
    """Stored bytes that do not decode to a valid state."""


def command_seq(command_id: bytes) -> int:
    """The per-remote sequence number at the start of a command id (wire.COMMAND_SEQ_LEN)."""
    return int.from_bytes(command_id[: wire.COMMAND_SEQ_LEN], "big")


@dataclass(frozen=True)
class OutcomeRecord:
    command_id: bytes
    requested: int
    outcome: Outcome
    delivered: int


class Known(enum.Enum):
    """What the pump can say about a command id it holds no record of."""

    #: Never committed: its seq is above the remote's high-water mark.
    NEVER_SEEN = enum.auto()
    #: Never committed and never will be: its seq is not above the high-water
    #: mark, and every committed id above ``forgotten-through`` is held.
    STALE = enum.auto()
    #: May have been committed and forgotten since.
    EVICTED = enum.auto()


@dataclass(frozen=True)
class RemoteOutcomes:
    """One remote's outcome table (module docstring)."""

    remote: bytes
    high_water: int = 0
    forgotten_through: int = 0
    records: tuple[OutcomeRecord, ...] = ()

    def find(self, command_id: bytes) -> OutcomeRecord | None:
        for record in self.records:
            if record.command_id == command_id:
                return record
        return None

    def classify(self, command_id: bytes) -> Known:
        """What an id this table does not hold is (module docstring)."""
        seq = command_seq(command_id)
        if seq > self.high_water:
            return Known.NEVER_SEEN
        if 0 < seq <= self.forgotten_through:
            return Known.EVICTED
        return Known.STALE

    def tombstone(self) -> RemoteOutcomes:
        """The table of an unpaired remote: every id it committed now reads *evicted*."""
        return RemoteOutcomes(self.remote, self.high_water, self.high_water, ())


@dataclass(frozen=True)
class OutcomeTables:
    """Every remote's outcome table (SPEC §12.4)."""

    tables: tuple[RemoteOutcomes, ...] = ()
    #: A tombstone was dropped: a remote with no table may have been forgotten.
    tables_dropped: bool = False

    def table(self, remote: bytes) -> RemoteOutcomes | None:
        for table in self.tables:
            if table.remote == remote:
                return table
        return None

    def records(self) -> tuple[OutcomeRecord, ...]:
        return tuple(record for table in self.tables for record in table.records)


@dataclass(frozen=True, repr=False)
class PersistentState:
    pump_static: bytes
    audit_key: bytes
    remotes: tuple[bytes, ...] = ()
    remote_bolus_enabled: bool = False
    prescriber: bytes | None = None
    policy: LimitPolicy = field(default_factory=LimitPolicy.factory)
    outcome_tables: OutcomeTables = field(default_factory=OutcomeTables)
    ledger: tuple[tuple[int, int], ...] = ()
    pairing_failures: int = 0
    boot_count: int = 0

    def __repr__(self) -> str:  # never print key material
        return (
            f"PersistentState(remotes={len(self.remotes)}, "
            f"remote_bolus={self.remote_bolus_enabled}, policy=v{self.policy.version})"
        )

    @property
    def outcomes(self) -> tuple[OutcomeRecord, ...]:
        """Every outcome record held, of every remote."""
        return self.outcome_tables.records()

    def outcome(self, command_id: bytes, remote: bytes | None = None) -> OutcomeRecord | None:
        """The record of ``command_id`` (in ``remote``'s table only, if given)."""
        for table in self.outcome_tables.tables:
            if remote is None or table.remote == remote:
                record = table.find(command_id)
                if record is not None:
                    return record
        return None

    def lookup(self, remote: bytes, command_id: bytes) -> OutcomeRecord | Known:
        """``remote``'s record of ``command_id``, or what can be said without one."""
        tables = self.outcome_tables
        table = tables.table(remote)
        if table is None:
            return Known.EVICTED if tables.tables_dropped else Known.NEVER_SEEN
        record = table.find(command_id)
        return record if record is not None else table.classify(command_id)

    def with_outcome(self, record: OutcomeRecord, remote: bytes | None = None) -> PersistentState:
        """Store ``record``: replace the record of its id (in ``remote``'s table
        if given, else wherever it is), or add it to ``remote``'s table,
        evicting the lowest seq when full.

        A new id must have a seq above the remote's high-water mark (the
        command handlers check it first; SPEC §12.4).

        Raises:
            ValueError: a new id without ``remote``, or with a seq not above
                the remote's high-water mark (a caller bug).
        """
        tables = list(self.outcome_tables.tables)
        index = next(
            (
                i
                for i, t in enumerate(tables)
                if (remote is None or t.remote == remote) and t.find(record.command_id) is not None
            ),
            None,
        )
        if index is not None:
            table = tables.pop(index)
            records = tuple(
                record if r.command_id == record.command_id else r for r in table.records
            )
            tables.append(replace(table, records=records))
        else:
            if remote is None:
                raise ValueError("a new outcome record needs its remote")
            old = next((t for t in tables if t.remote == remote), None)
            table = old if old is not None else RemoteOutcomes(remote)
            seq = command_seq(record.command_id)
            if not table.high_water < seq:
                raise ValueError("a new command id must have a seq above the high-water mark")
            if old is not None:
                tables.remove(old)
            tables.append(_insert(table, record, seq))
        return replace(self, outcome_tables=self._retire(tables))

    def _retire(self, tables: list[RemoteOutcomes]) -> OutcomeTables:
        """Keep the tables within their bounds: tombstone unpaired remotes'
        tables (least recently written first) while too many hold records,
        and drop the oldest tombstones while there are too many tables."""
        paired = set(self.remotes)
        kept = list(tables)
        while sum(1 for t in kept if t.records) > _MAX_TABLES_WITH_RECORDS:
            # At most MAX_REMOTES paired tables and one bolus in progress hold
            # records, so an unpaired, settled table is there to retire.
            victim = next(
                i
                for i, t in enumerate(kept)
                if t.records
                and t.remote not in paired
                and all(r.outcome is not Outcome.IN_PROGRESS for r in t.records)
            )
            kept[victim] = kept[victim].tombstone()
        dropped = self.outcome_tables.tables_dropped
        while len(kept) > MAX_OUTCOME_TABLES:
            victim = next(i for i, t in enumerate(kept) if not t.records and t.remote not in paired)
            del kept[victim]
            dropped = True
        return OutcomeTables(tuple(kept), dropped)


def _insert(table: RemoteOutcomes, record: OutcomeRecord, seq: int) -> RemoteOutcomes:
    records = [*table.records, record]
    forgotten = table.forgotten_through
    while len(records) > OUTCOME_CAPACITY_PER_REMOTE:
        # Lowest seq first; never an in-progress record (there is at most one).
        victim = next(i for i, r in enumerate(records) if r.outcome is not Outcome.IN_PROGRESS)
        forgotten = max(forgotten, command_seq(records[victim].command_id))
        del records[victim]
    return RemoteOutcomes(table.remote, seq, forgotten, tuple(records))


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
            _encode_outcomes(state.outcome_tables),
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
        tables = _decode_outcomes(outcomes)
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
        outcome_tables=tables,
        ledger=tuple((e[0], e[1]) for e in ledger),
        pairing_failures=failures,
        boot_count=boots,
    )


def _encode_outcomes(tables: OutcomeTables) -> list[object]:
    return [
        [
            [
                t.remote,
                t.high_water,
                t.forgotten_through,
                [[r.command_id, r.requested, int(r.outcome), r.delivered] for r in t.records],
            ]
            for t in tables.tables
        ],
        tables.tables_dropped,
    ]


def _decode_outcomes(item: object) -> OutcomeTables:
    _need(isinstance(item, list) and len(item) == 2 and type(item[1]) is bool, "outcome tables")
    assert isinstance(item, list)
    raw_tables, dropped = item
    _need(isinstance(raw_tables, list) and len(raw_tables) <= MAX_OUTCOME_TABLES, "outcome tables")
    tables: list[RemoteOutcomes] = []
    for raw in raw_tables:
        _need(
            isinstance(raw, list)
            and len(raw) == 4
            and _is_bytes(raw[0], wire.X25519_KEY_LEN)
            and _is_uint(raw[1])
            and _is_uint(raw[2])
            and raw[2] <= raw[1] <= wire.MAX_COMMAND_SEQ
            and isinstance(raw[3], list)
            and len(raw[3]) <= OUTCOME_CAPACITY_PER_REMOTE,
            "outcome table",
        )
        records = []
        previous = 0
        for entry in raw[3]:
            _need(
                isinstance(entry, list)
                and len(entry) == 4
                and _is_bytes(entry[0], wire.COMMAND_ID_LEN)
                and all(_is_uint(v) for v in entry[1:])
                and entry[2] in Outcome._value2member_map_
                and entry[2] != Outcome.EVICTED
                and entry[2] != Outcome.UNKNOWN,
                "outcome record",
            )
            # Records run in ascending seq order up to the high-water mark,
            # above forgotten-through -- but for the one in progress, which
            # is never evicted (module docstring).
            seq = command_seq(entry[0])
            _need(
                previous < seq <= raw[1] and (seq > raw[2] or entry[2] == Outcome.IN_PROGRESS),
                "outcome record order",
            )
            previous = seq
            records.append(OutcomeRecord(entry[0], entry[1], Outcome(entry[2]), entry[3]))
        tables.append(RemoteOutcomes(raw[0], raw[1], raw[2], tuple(records)))
    _need(len({t.remote for t in tables}) == len(tables), "outcome tables (a remote twice)")
    _need(sum(1 for t in tables if t.records) <= _MAX_TABLES_WITH_RECORDS, "outcome tables")
    return OutcomeTables(tuple(tables), dropped)


def _need(condition: bool, what: str) -> None:
    if not condition:
        raise StateInvalid(f"invalid {what}")


def _is_bytes(value: object, length: int) -> bool:
    return type(value) is bytes and len(value) == length


def _is_uint(value: object) -> bool:
    return type(value) is int and 0 <= value <= wire.UINT64_MAX
