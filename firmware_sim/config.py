"""Firmware-only constants of the simulated pump, in one place.

Numbers that cross the wire or bound a protocol buffer live in
``protocol/wire.py``; this module holds the ones only the pump's firmware
needs (motor timing, reservoir, catch-up bounds, ledger sizes).  A port to C
turns each into a ``#define``.  Times the firmware computes with are integer
milliseconds of its monotonic clock; the ``_S`` twins are for people.
"""

from __future__ import annotations

from typing import Final

from pumpguard.protocol.timebase import seconds_from_ms

# --- Delivery timing (firmware_sim/delivery.py) ------------------------------

#: A bolus is delivered one pulse every this many milliseconds (0.05 U per
#: 2 s = 1.5 U/min), never faster: pulse ``j`` of a bolus started at ``t`` is
#: due at ``t + j * BOLUS_PULSE_INTERVAL_MS``.
BOLUS_PULSE_INTERVAL_MS: Final = 2000
BOLUS_PULSE_INTERVAL_S: Final = seconds_from_ms(BOLUS_PULSE_INTERVAL_MS)
#: Most overdue bolus pulses one tick may deliver after the firmware's loop
#: was held up (0.25 U).  If more were due, the rest of the bolus slips: it
#: continues at the nominal interval from that tick, so a stall never turns
#: into a fast bolus.
BOLUS_MAX_CATCHUP_PULSES: Final = 5
#: Most overdue basal pulses one tick may make up.  Older ones are skipped
#: and counted as missed (reported, never delivered later).
BASAL_MAX_CATCHUP_PULSES: Final = 3
#: One hour in milliseconds: basal rates are pulses per hour.
MS_PER_HOUR: Final = 3_600_000
#: Out of the box the basal rate is 20 pulses per hour (1.0 U/h).
DEFAULT_BASAL_PULSES_PER_HOUR: Final = 20
#: Highest basal rate the firmware accepts (30 U/h, one pulse every 6 s).
MAX_BASAL_PULSES_PER_HOUR: Final = 600

# --- Reservoir --------------------------------------------------------------

#: A full reservoir: 300 U.
RESERVOIR_CAPACITY_PULSES: Final = 6000
#: The low-reservoir alarm sounds once when the reservoir drops below this
#: (20 U) and re-arms when the reservoir is refilled.
LOW_RESERVOIR_PULSES: Final = 400

# --- Limit enforcement (firmware_sim/limits.py) -----------------------------

#: Rolling windows of S6, in milliseconds of the monotonic clock.
LIMIT_WINDOW_1H_MS: Final = 3_600_000
LIMIT_WINDOW_24H_MS: Final = 86_400_000
#: Settled boluses the ledger keeps exactly, newest first.  When more
#: arrive, the oldest is coalesced into its hour bucket (limits.BolusLedger).
LEDGER_RECENT_ENTRIES: Final = 32
#: Width of a coalescing bucket: a coalesced pulse may count at most this
#: much longer than it should (never shorter).  At most
#: ``LIMIT_WINDOW_24H_MS // LEDGER_BUCKET_MS + 2`` buckets are ever live.
LEDGER_BUCKET_MS: Final = 3_600_000

# --- Flash layout (firmware_sim/pump.py, SPEC §13.1) ------------------------

#: The simulated flash: 32 sectors of 4 KiB (128 KiB), one image file.
FLASH_SECTOR_SIZE: Final = 4096
FLASH_SECTOR_COUNT: Final = 32
#: (first sector, sector count) of each region.
FLASH_MAIN_STORE: Final = (0, 4)  # persistent state snapshots (store.py)
FLASH_DELIVERY_STORE: Final = (4, 2)  # delivery engine snapshot, once per pulse tick
FLASH_AUDIT: Final = (6, 24)  # audit log ring (audit.py)

# --- Pairing on the pump (SPEC §9.5) ------------------------------------------

#: Pairing mode ends by itself after this long.
PAIRING_MODE_TIMEOUT_S: Final = 120.0
#: Failed attempts allowed before lockouts start ...
PAIRING_FAILURES_BEFORE_LOCKOUT: Final = 3
#: ... then each further failure doubles the lockout, from this ...
PAIRING_LOCKOUT_BASE_S: Final = 30.0
#: ... up to this.
PAIRING_LOCKOUT_MAX_S: Final = 3600.0

# --- Front panel (firmware_sim/pump.py) --------------------------------------

#: Refused link input is shown on the front panel at most this often (S10).
REJECTION_ALERT_S: Final = 60.0
