"""The front panel's button table (firmware_sim/buttons.py).

* Every button has exactly one row, and the docstring's table is :data:`BUTTON_TABLE`.
* A press acts exactly in the modes its row lists: on the real firmware, in
  the safe state only RESET_STORAGE does anything (S8); while running, every
  other button does what its row says.
"""

from __future__ import annotations

import contextlib
import re

import pytest

from pumpguard.firmware_sim import buttons
from pumpguard.firmware_sim.buttons import BUTTON_TABLE, press
from pumpguard.firmware_sim.commands import PumpMode
from pumpguard.firmware_sim.panel import Button
from pumpguard.host.inmemory import Rig


def _rows_in(text: str) -> dict[str, frozenset[str]]:
    rows = {}
    for line in text.splitlines():
        match = re.match(r"([A-Z_]+) +((?:[A-Z_]+, )*[A-Z_]+) {2,}\S", line)
        if match and match.group(1) in Button.__members__:
            rows[match.group(1)] = frozenset(match.group(2).split(", "))
    return rows


def test_every_button_has_one_row_and_the_docstring_is_the_table() -> None:
    assert set(BUTTON_TABLE) == set(Button)
    assert all(rule.button is button for button, rule in BUTTON_TABLE.items())
    assert buttons.__doc__ is not None
    assert _rows_in(buttons.__doc__) == {
        button.name: frozenset(mode.name for mode in rule.modes)
        for button, rule in BUTTON_TABLE.items()
    }


class _Recorder:
    """A pump that records which action a press reached (PanelPump, by duck typing)."""

    def __init__(self, mode: PumpMode) -> None:
        self.mode = mode
        self.acted = False

    def __getattr__(self, name: str) -> object:
        self.acted = True
        raise _Acted(name)


class _Acted(Exception):
    pass


@pytest.mark.parametrize("mode", list(PumpMode), ids=lambda m: m.name)
@pytest.mark.parametrize("button", list(Button), ids=lambda b: b.name)
def test_a_press_reaches_its_action_exactly_in_its_rows_modes(
    button: Button, mode: PumpMode
) -> None:
    pump = _Recorder(mode)
    with contextlib.suppress(_Acted):
        press(pump, button, b"", 0.0)  # type: ignore[arg-type]
    assert pump.acted == (mode in BUTTON_TABLE[button].modes)


def test_in_the_safe_state_a_button_other_than_reset_changes_nothing() -> None:
    """On the firmware: storage corrupted, then every other button pressed."""
    rig = Rig()
    for sector in range(rig.flash.sector_count):
        rig.flash.erase(sector)
    rig.flash.program(0, b"\x00" * 64)  # a main store no commit can leave
    rig.reboot()
    assert rig.pump.mode is PumpMode.SAFE_STATE
    before = (rig.pump.persistent, rig.pump.delivery.state, rig.flash.read(0, 64))
    for button in Button:
        if button is not Button.RESET_STORAGE:
            rig.press(button)
    assert (rig.pump.persistent, rig.pump.delivery.state, rig.flash.read(0, 64)) == before
    assert rig.pump.mode is PumpMode.SAFE_STATE
    rig.press(Button.RESET_STORAGE)
    assert rig.pump.mode.name == "RUNNING"  # (mypy narrowed the mode above)
