"""Insulin amounts: decimal units for people, integer pulses on the wire (SPEC §12).

Floating point never touches a dose: "2.35" is parsed as a decimal, and a
dose that is not a whole number of pulses is refused rather than rounded.

>>> units_to_pulses("2.5")
50
>>> pulses_to_units(47)
'2.35'
>>> units_to_pulses("0.07")
Traceback (most recent call last):
  ...
ValueError: 0.07 U is not a multiple of the pump's 0.05 U pulse
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Final

from .wire import PULSE_MILLIUNITS, UINT32_MAX

#: Milli-units per unit of insulin (an SI prefix, not the milliseconds of
#: ``timebase``).
_MILLIUNITS_PER_UNIT: Final = 1000
_DOSE = re.compile(r"[0-9]{1,9}(\.[0-9]{1,9})?")


def units_to_pulses(text: str) -> int:
    """Parse a dose in units; raise ValueError unless it is a whole, positive number of pulses."""
    stripped = text.strip()
    # ASCII digits only: Decimal would also take fullwidth digits or "inf".
    if not _DOSE.fullmatch(stripped):
        raise ValueError(f"{text!r} is not a number of units (like 1.5)")
    units = Decimal(stripped)
    if units <= 0:
        raise ValueError(f"{text} U is not a positive dose")
    pulses = units * _MILLIUNITS_PER_UNIT / PULSE_MILLIUNITS
    # Doses travel as uint32 pulses; anything above is a typo, not a dose.
    if pulses > UINT32_MAX:
        raise ValueError(f"{text} U is far beyond any dose a pump delivers")
    if pulses != pulses.to_integral_value():
        raise ValueError(f"{text} U is not a multiple of the pump's 0.05 U pulse")
    return int(pulses)


def pulses_to_units(pulses: int) -> str:
    """Exact decimal string of ``pulses`` in units, without trailing zeros."""
    text = str(Decimal(pulses * PULSE_MILLIUNITS) / _MILLIUNITS_PER_UNIT)
    return text.rstrip("0").rstrip(".") if "." in text else text


def pulses_to_float_units(pulses: int) -> float:
    """For JSON output: the nearest float, rounded to the pulse's 3 decimals."""
    return round(pulses * PULSE_MILLIUNITS / _MILLIUNITS_PER_UNIT, 3)
