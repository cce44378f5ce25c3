"""Seconds in, milliseconds out: the one place time changes unit.

The sans-I/O core and the firmware are handed ``now`` as float seconds (a
monotonic clock), while every stamp that is stored or sent is an integer
number of milliseconds.  The direction of rounding is a safety decision, so
it is named rather than left to ``int()``:

* :func:`ms_floor` for the time that is compared against stamps ("how late
  is it"): rounding down never makes a window close early.
* :func:`ms_ceil` for stamps that are recorded ("when did it happen"):
  rounding up never makes a delivery look older than it is.

>>> ms_floor(1.2345), ms_ceil(1.2341)
(1234, 1235)
>>> ms_floor(float("nan"))
Traceback (most recent call last):
  ...
ValueError: time must be a finite number of seconds
"""

from __future__ import annotations

import math

#: Milliseconds per second; the only place this factor is written.
MS_PER_SECOND = 1000


def _finite(seconds: float) -> float:
    if not math.isfinite(seconds):
        raise ValueError("time must be a finite number of seconds")
    return seconds


def ms_floor(seconds: float) -> int:
    """``seconds`` as whole milliseconds, rounded down (times compared against stamps)."""
    return math.floor(_finite(seconds) * MS_PER_SECOND)


def ms_ceil(seconds: float) -> int:
    """``seconds`` as whole milliseconds, rounded up (stamps that record an event)."""
    return math.ceil(_finite(seconds) * MS_PER_SECOND)


def seconds_from_ms(milliseconds: int) -> float:
    """Whole milliseconds as float seconds, for display and for scheduling."""
    return milliseconds / MS_PER_SECOND
