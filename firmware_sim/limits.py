"""Enforcement of the bolus limits (S6) on the pump's monotonic clock.

Who may *set* limits -- the prescriber's signature over a versioned policy --
is ``protocol/policy.py``; the policy type is its :class:`LimitPolicy`
(``version``, ``max_bolus_pulses``, ``max_1h_pulses``, ``max_24h_pulses``,
``LimitPolicy.factory()`` from ``wire.FACTORY_*``), re-exported here.  This
module decides whether a bolus *fits* the policy in force:

* a single bolus may be at most ``max_bolus_pulses`` (that many is accepted,
  one more is refused);
* bolus pulses in any rolling hour at most ``max_1h_pulses``, and in any
  rolling 24 hours at most ``max_24h_pulses``.

Basal is not counted: it is set on the pump itself and bounded by
``config.MAX_BASAL_PULSES_PER_HOUR``.

The ledger and its entries
--------------------------

:class:`BolusLedger` keeps, in integer milliseconds of the monotonic clock,
the bolus pulses of the last 24 hours: at most one OPEN *reservation* (the
bolus in progress -- the pump delivers one at a time), up to
``LEDGER_RECENT_ENTRIES`` exact SETTLED entries ``(t_ms, pulses)``, and, when
more boluses than that fall within 24 hours, one coalesced entry per
``LEDGER_BUCKET_MS`` (one hour) bucket of the monotonic clock.  That is at
most ``max_entries`` = 32 + 27 entries, whatever the usage.  An entry counts
in a window while ``now_ms - t_ms <= window`` (inclusive: a window reopens
only *after* 3600 s / 86400 s).

============ ============================== =========== ===========================================
entry        event                          next        effect
============ ============================== =========== ===========================================
(none)       ``commit()``, check passes     OPEN        reserve all requested pulses
OPEN         ``settle(delivered)``          SETTLED     pulses = delivered, stamped at settle time
OPEN         ``snapshot()`` + ``restore()`` SETTLED     all requested pulses, age 0 at the snapshot
SETTLED      recent list over its size      COALESCED   oldest added to its hour bucket
COALESCED    another lands in its bucket    COALESCED   pulses summed, the later stamp kept
any settled  age > 24 h                     (dropped)   counts in no window any more
============ ============================== =========== ===========================================

Why each rule never undercounts:

* **Reserve at commit.**  A bolus counts fully from the moment it is
  committed, before any pulse, so two commits in a row cannot both fit the
  room that was there for one.  A cancelled bolus shrinks to what it
  delivered when it is settled.
* **Stamp at the end.**  A settled entry is stamped when the bolus *ended*,
  its last possible pulse, not when it started; a bolus that slipped or took
  minutes therefore stays in the window at least as long as any of its
  pulses.  An OPEN reservation never ages.
* **Coalesce to the latest stamp.**  A bucket holds the sum of its entries
  at the latest of their stamps.  Whenever any of them counted in a window,
  the bucket counts at least as much, and for at most one bucket width
  longer.  It may refuse a bolus a little longer; it never lets one through
  that the exact ledger would refuse.
* **Round towards counting.**  Stamps are rounded up (``timebase.ms_ceil``)
  and the time compared against them down (``timebase.ms_floor``); a ``now``
  earlier than one already seen is taken as the latest seen.

Reboot: only the monotonic clock, never the wall clock
------------------------------------------------------

Wall-clock time can be set by the user (or by whoever is at the pump's menu)
and must never reopen a window, so the ledger does not know it.  The
monotonic clock restarts at boot, so :meth:`BolusLedger.snapshot` stores
each entry's *age* at snapshot time and :meth:`BolusLedger.restore` rebuilds
it as that age at the boot instant: the ledger pretends that no time passed
between the snapshot and the boot.  Insulin delivered before the outage is
therefore counted at least as long as it really should be, and the windows
reopen later than they would with a perfect clock, never earlier.  An OPEN
reservation is stored as all its requested pulses at age 0 (the delivery
engine does not resume an interrupted bolus).  If the stored ledger cannot be
read, :meth:`BolusLedger.assume_full` is the safe replacement: it refuses
every bolus for 24 hours rather than start from an empty, permissive ledger
(S8).

>>> ledger = BolusLedger(LimitPolicy.factory())
>>> ledger.commit(bytes(16), 200, now=0.0)
>>> ledger.settle(bytes(16), 200, now=400.0)
>>> ledger.check(101, now=401.0)
Traceback (most recent call last):
    ...
pumpguard.firmware_sim.limits.LimitExceeded: 1h limit: at most 100 pulses now
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

from pumpguard.protocol import LimitPolicy, PolicyInvalid, wire
from pumpguard.protocol.timebase import ms_ceil, ms_floor

from . import config

__all__ = [
    "BolusLedger",
    "LedgerBusy",
    "LedgerSnapshotInvalid",
    "LimitError",
    "LimitExceeded",
    "LimitKind",
    "LimitPolicy",
    "PolicyInvalid",
    "PolicyRollback",
    "validate_policy",
]

_WINDOW_1H_MS: Final = config.LIMIT_WINDOW_1H_MS
_WINDOW_24H_MS: Final = config.LIMIT_WINDOW_24H_MS
#: Buckets live at once: every live stamp is within 24 h of the newest time
#: seen, so their indices span at most 24 h / bucket + 1 values; one more
#: because restore and snapshot round ages to whole milliseconds.
_MAX_BUCKETS: Final = _WINDOW_24H_MS // config.LEDGER_BUCKET_MS + 2


class LimitKind(enum.StrEnum):
    """Which limit refused a bolus."""

    SINGLE = "single"
    HOUR = "1h"
    DAY = "24h"

    @property
    def refusal(self) -> wire.RefusalCode:
        """The application refusal code for this limit (SPEC §12)."""
        return _REFUSALS[self]


_REFUSALS: Final = {
    LimitKind.SINGLE: wire.RefusalCode.OVER_SINGLE_LIMIT,
    LimitKind.HOUR: wire.RefusalCode.OVER_1H_LIMIT,
    LimitKind.DAY: wire.RefusalCode.OVER_24H_LIMIT,
}


class LimitError(Exception):
    """Base of this module's errors."""


class LimitExceeded(LimitError):
    """The bolus does not fit the policy in force.

    Attributes:
        which: the first limit it breaks, checked single, 1 h, 24 h.
        allowed_pulses: the largest bolus that would be accepted right now
            (0 if none).
    """

    def __init__(self, which: LimitKind, allowed_pulses: int) -> None:
        self.which = which
        self.allowed_pulses = allowed_pulses
        super().__init__(f"{which} limit: at most {allowed_pulses} pulses now")


class LedgerBusy(LimitError):
    """A bolus is already reserved and not settled: one bolus at a time."""


class PolicyRollback(LimitError):
    """A policy whose version is not above the one in force."""


class LedgerSnapshotInvalid(LimitError, ValueError):
    """A stored ledger that :meth:`BolusLedger.snapshot` could not have made.
    Use :meth:`BolusLedger.assume_full`, never an empty ledger."""


def validate_policy(policy: LimitPolicy) -> LimitPolicy:
    """Return ``policy`` if its fields are integers within the bounds.

    Raises:
        PolicyInvalid: a field is not an ``int``, or not
            ``0 < max_bolus <= max_1h <= max_24h``, ``max_bolus <=
            ABSOLUTE_MAX_BOLUS_PULSES``, ``max_24h <= ABSOLUTE_MAX_24H_PULSES``.
    """
    fields = (
        policy.version,
        policy.max_bolus_pulses,
        policy.max_1h_pulses,
        policy.max_24h_pulses,
    )
    if any(type(value) is not int for value in fields):
        raise PolicyInvalid("limits must be integers")
    policy.check_bounds()
    return policy


@dataclass(slots=True)
class _Reservation:
    cmd_id: bytes
    pulses: int


class BolusLedger:
    """Bolus pulses of the last 24 h, and the check against the policy.

    Args:
        policy: the limits in force (validated).
        recent_entries: settled entries kept exact before coalescing (>= 1).
    """

    def __init__(
        self, policy: LimitPolicy, *, recent_entries: int = config.LEDGER_RECENT_ENTRIES
    ) -> None:
        if type(recent_entries) is not int or recent_entries < 1:
            raise ValueError("recent_entries must be a positive integer")
        self._policy = validate_policy(policy)
        self._recent_max = recent_entries
        #: Exact settled entries ``(t_ms, pulses)``, oldest first.
        self._recent: list[tuple[int, int]] = []
        #: Coalesced entries: bucket index ``t_ms // LEDGER_BUCKET_MS`` ->
        #: ``(latest t_ms, pulses)``.  At most ``_MAX_BUCKETS`` after pruning.
        self._buckets: dict[int, tuple[int, int]] = {}
        self._open: _Reservation | None = None
        self._now_ms: int | None = None

    # --- policy ----------------------------------------------------------------

    @property
    def policy(self) -> LimitPolicy:
        return self._policy

    def set_policy(self, policy: LimitPolicy) -> None:
        """Put ``policy`` in force.  Its authenticity is checked elsewhere;
        here only that it is valid and newer.  Pulses already counted stay
        counted under the new limits.

        Raises:
            PolicyInvalid: out of bounds.
            PolicyRollback: ``policy.version`` is not above the current one.
        """
        validate_policy(policy)
        if policy.version <= self._policy.version:
            raise PolicyRollback(
                f"policy version {policy.version} is not above {self._policy.version}"
            )
        self._policy = policy

    # --- queries ---------------------------------------------------------------

    @property
    def max_entries(self) -> int:
        """Most entries a snapshot of this ledger holds (and restore accepts)."""
        return self._recent_max + _MAX_BUCKETS + 1

    def __len__(self) -> int:
        """Entries held: exact, coalesced and the reservation."""
        return len(self._recent) + len(self._buckets) + (self._open is not None)

    @property
    def coalesced(self) -> int:
        """How many coalesced (bucket) entries are held."""
        return len(self._buckets)

    @property
    def reserved(self) -> tuple[bytes, int] | None:
        """``(cmd_id, pulses)`` of the open reservation, if any."""
        r = self._open
        return None if r is None else (r.cmd_id, r.pulses)

    def used(self, window_ms: int, now: float) -> int:
        """Bolus pulses counted in the window of ``window_ms`` ending at ``now``."""
        now_ms = self._clock(now)
        total = sum(p for t, p in self._settled() if now_ms - t <= window_ms)
        return total + (self._open.pulses if self._open is not None else 0)

    def allowed(self, now: float) -> int:
        """The largest bolus that fits all three limits at ``now`` (>= 0)."""
        p = self._policy
        return max(
            0,
            min(
                p.max_bolus_pulses,
                p.max_1h_pulses - self.used(_WINDOW_1H_MS, now),
                p.max_24h_pulses - self.used(_WINDOW_24H_MS, now),
            ),
        )

    def check(self, pulses: int, now: float) -> None:
        """Whether a bolus of ``pulses`` fits now.  Changes nothing.

        Raises:
            ValueError: ``pulses`` is not a positive integer.
            LimitExceeded: it does not fit (``which`` and ``allowed_pulses``).
        """
        if type(pulses) is not int or pulses < 1:
            raise ValueError("pulses must be a positive integer")
        p = self._policy
        if pulses > p.max_bolus_pulses:
            raise LimitExceeded(LimitKind.SINGLE, self.allowed(now))
        if self.used(_WINDOW_1H_MS, now) + pulses > p.max_1h_pulses:
            raise LimitExceeded(LimitKind.HOUR, self.allowed(now))
        if self.used(_WINDOW_24H_MS, now) + pulses > p.max_24h_pulses:
            raise LimitExceeded(LimitKind.DAY, self.allowed(now))

    # --- changes -----------------------------------------------------------------

    def commit(self, cmd_id: bytes, pulses: int, now: float) -> None:
        """Check, then reserve all ``pulses`` for the bolus ``cmd_id``.

        Call before the first pulse; persist the ledger before delivering.

        Raises:
            ValueError: bad ``cmd_id`` or ``pulses``.
            LedgerBusy: a reservation is still open.
            LimitExceeded: it does not fit; nothing is reserved.
        """
        if type(cmd_id) is not bytes or len(cmd_id) != wire.COMMAND_ID_LEN:
            raise ValueError(f"cmd_id must be {wire.COMMAND_ID_LEN} bytes")
        if self._open is not None:
            raise LedgerBusy("a bolus is already reserved")
        self.check(pulses, now)
        self._open = _Reservation(cmd_id, pulses)

    def settle(self, cmd_id: bytes, delivered: int, now: float) -> None:
        """The bolus ``cmd_id`` ended at ``now`` having delivered ``delivered``.

        The reservation becomes an entry of ``delivered`` pulses stamped
        ``now`` (none if 0).

        Raises:
            ValueError: no open reservation for ``cmd_id``, or ``delivered``
                is negative or above what was reserved.
        """
        r = self._open
        if r is None or r.cmd_id != cmd_id:
            raise ValueError("no open reservation for this cmd_id")
        if type(delivered) is not int or not 0 <= delivered <= r.pulses:
            raise ValueError("delivered must be an integer in 0..reserved")
        stamp = self._stamp(now)
        self._open = None
        if delivered:
            self._insert(stamp, delivered)

    # --- persistence -------------------------------------------------------------

    def snapshot(self, now: float) -> tuple[tuple[int, int], ...]:
        """``((age_ms, pulses), ...)`` oldest first, for storage.

        The open reservation is included as all its pulses at age 0.
        """
        now_ms = self._clock(now)
        self._prune(now_ms)
        out = [(max(0, now_ms - t), p) for t, p in self._settled()]
        out.sort(key=lambda entry: -entry[0])
        if self._open is not None:
            out.append((0, self._open.pulses))
        return tuple(out)

    @classmethod
    def restore(
        cls,
        entries: object,
        *,
        policy: LimitPolicy,
        now: float,
        recent_entries: int = config.LEDGER_RECENT_ENTRIES,
    ) -> BolusLedger:
        """Rebuild after a reboot: each entry is its stored age at ``now``
        (no time is assumed to have passed while the pump was off).

        Raises:
            LedgerSnapshotInvalid: not a sequence of at most ``max_entries``
                pairs of integers ``(age_ms >= 0, 1 <= pulses <=
                ABSOLUTE_MAX_24H_PULSES)``.
            PolicyInvalid: ``policy`` is out of bounds.
        """
        ledger = cls(policy, recent_entries=recent_entries)
        now_ms = ledger._clock(now)
        if not isinstance(entries, list | tuple):
            raise LedgerSnapshotInvalid("ledger is not a sequence")
        if len(entries) > ledger.max_entries:
            raise LedgerSnapshotInvalid(
                f"ledger has {len(entries)} entries, at most {ledger.max_entries}"
            )
        rebuilt: list[tuple[int, int]] = []
        for item in entries:
            if not isinstance(item, list | tuple) or len(item) != 2:
                raise LedgerSnapshotInvalid("ledger entry is not a pair")
            age, pulses = item
            if type(age) is not int or type(pulses) is not int:
                raise LedgerSnapshotInvalid("ledger entry is not two integers")
            if age < 0 or not 1 <= pulses <= wire.ABSOLUTE_MAX_24H_PULSES:
                raise LedgerSnapshotInvalid("ledger entry out of range")
            if age <= _WINDOW_24H_MS:
                rebuilt.append((now_ms - age, pulses))
        rebuilt.sort()
        for t, p in rebuilt:
            ledger._insert(t, p)
        return ledger

    @classmethod
    def assume_full(cls, policy: LimitPolicy, *, now: float) -> BolusLedger:
        """The safe ledger when the stored one is lost or corrupt: the whole
        24 h allowance counts as delivered at ``now``, so every bolus is
        refused for 24 hours (a bad store never makes the pump more
        permissive, S8)."""
        ledger = cls(policy)
        ledger._insert(ledger._stamp(now), ledger._policy.max_24h_pulses)
        return ledger

    # --- internals -----------------------------------------------------------------

    def _settled(self) -> list[tuple[int, int]]:
        return [*self._buckets.values(), *self._recent]

    def _clock(self, now: float) -> int:
        now_ms = ms_floor(now)
        if self._now_ms is not None and now_ms < self._now_ms:
            now_ms = self._now_ms
        self._now_ms = now_ms
        return now_ms

    def _stamp(self, now: float) -> int:
        now_ms = self._clock(now)
        return max(now_ms, ms_ceil(now))

    def _prune(self, now_ms: int) -> None:
        """Drop what counts in no window any more (older than 24 h)."""
        self._recent = [(t, p) for t, p in self._recent if now_ms - t <= _WINDOW_24H_MS]
        for index in [i for i, (t, _) in self._buckets.items() if now_ms - t > _WINDOW_24H_MS]:
            del self._buckets[index]

    def _insert(self, t_ms: int, pulses: int) -> None:
        """Add a settled entry; coalesce the oldest exact ones beyond the bound."""
        if self._now_ms is not None:
            self._prune(self._now_ms)
        i = len(self._recent)
        while i > 0 and self._recent[i - 1][0] > t_ms:
            i -= 1
        self._recent.insert(i, (t_ms, pulses))
        while len(self._recent) > self._recent_max:
            t0, p0 = self._recent.pop(0)
            index = t0 // config.LEDGER_BUCKET_MS
            t_b, p_b = self._buckets.get(index, (t0, 0))
            self._buckets[index] = (max(t_b, t0), p_b + p0)
