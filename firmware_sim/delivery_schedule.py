"""When each pulse is due: the basal and bolus schedules, in integer milliseconds.

The delivery engine (``delivery.py``) asks these schedules which pulses are
due at ``now`` and makes them; the schedules only compute.  All times are
integer milliseconds of the pump's monotonic clock (``timebase.ms_floor``),
so a C port computes the same due times as this model.  SPEC §12.2 fixes
the pulse (``PULSE_MILLIUNITS``, 0.05 U); the schedules are the firmware's.

* **Basal** at ``r`` pulses per hour: pulse ``k`` after the anchor (the
  moment basal last (re)started) is due at ``anchor + ceil(k * 3_600_000 / r)``.
* **Bolus**: pulse ``j`` is due at ``start + j * BOLUS_PULSE_INTERVAL_MS``, so
  starting a bolus never pulses and a bolus of ``N`` pulses is complete
  exactly ``N * BOLUS_PULSE_INTERVAL_S`` seconds after it started.
* **Catch-up bounds.**  When more than ``BOLUS_MAX_CATCHUP_PULSES`` bolus
  pulses are overdue (the loop was held up for more than ~10 s), that many
  are due now and the rest of the bolus *slips*: it continues at the nominal
  interval from now.  A bolus therefore never runs ahead of its schedule and
  a stall never becomes a burst of more than 0.25 U.  Overdue basal pulses
  beyond ``BASAL_MAX_CATCHUP_PULSES`` are skipped (the engine reports them
  as ``BasalMissed``): after a long gap the pump does not dump the missed
  basal in one go.

>>> basal = BasalSchedule(rate=20, anchor_ms=0)  # one pulse every 180 s
>>> basal.due(540_000)
([180000, 360000, 540000], 0)
>>> basal.k += 3  # the engine made them
>>> basal.due(3_600_000)  # 17 more overdue: the oldest 14 are skipped
([3240000, 3420000, 3600000], 14)
>>> bolus = BolusSchedule(bytes(16), requested=10, anchor_ms=0)
>>> bolus.due(30_000)  # all 10 overdue: 5 due now, the rest slips
([2000, 4000, 6000, 8000, 10000], True)
"""

from __future__ import annotations

from dataclasses import dataclass

from . import config

__all__ = ["BasalSchedule", "BolusSchedule"]


@dataclass(slots=True)
class BasalSchedule:
    """Basal at ``rate`` pulses per hour since ``anchor_ms``; the caller adds
    one to ``k`` for every pulse it makes (skipped pulses are counted here)."""

    rate: int
    anchor_ms: int
    k: int = 0

    def due(self, now_ms: int) -> tuple[list[int], int]:
        """Due times of the pulses to make now, oldest first (at most
        ``BASAL_MAX_CATCHUP_PULSES``), and how many older ones were skipped."""
        rate = self.rate
        if rate == 0:
            return [], 0
        overdue = (now_ms - self.anchor_ms) * rate // config.MS_PER_HOUR - self.k
        skipped = max(0, overdue - config.BASAL_MAX_CATCHUP_PULSES)
        self.k += skipped
        # ceil(k * H / rate) in integers.
        return [
            self.anchor_ms + -(-(self.k + i) * config.MS_PER_HOUR // rate)
            for i in range(1, overdue - skipped + 1)
        ], skipped

    def normalise(self) -> None:
        """Move whole hours from ``k`` into the anchor."""
        # ``rate`` pulses take exactly one hour, so whole hours can move from
        # the pulse index into the anchor without moving any due time.  Keeps
        # both numbers bounded (a C port stores them in 32/64-bit words).
        if self.rate:
            hours, self.k = divmod(self.k, self.rate)
            self.anchor_ms += hours * config.MS_PER_HOUR


@dataclass(slots=True)
class BolusSchedule:
    """The bolus ``cmd_id`` of ``requested`` pulses, ``delivered`` so far; the
    caller adds one to ``delivered`` for every pulse it makes.

    Pulse ``delivered - base + i`` is due at
    ``anchor_ms + (delivered - base + i) * BOLUS_PULSE_INTERVAL_MS``.
    """

    cmd_id: bytes
    requested: int
    anchor_ms: int
    delivered: int = 0
    base: int = 0

    def due(self, now_ms: int) -> tuple[list[int], bool]:
        """Due times of the pulses to make now, oldest first (at most
        ``BOLUS_MAX_CATCHUP_PULSES``), and whether the rest must slip."""
        interval = config.BOLUS_PULSE_INTERVAL_MS
        done = self.delivered - self.base
        overdue = (now_ms - self.anchor_ms) // interval - done
        n = min(overdue, self.requested - self.delivered)
        slipped = n > config.BOLUS_MAX_CATCHUP_PULSES
        n = min(n, config.BOLUS_MAX_CATCHUP_PULSES)
        return [self.anchor_ms + (done + i) * interval for i in range(1, n + 1)], slipped

    def slip(self, now_ms: int) -> None:
        """Overdue beyond the bound: the rest continues from ``now_ms``."""
        self.anchor_ms = now_ms
        self.base = self.delivered
