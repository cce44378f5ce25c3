"""The front panel's buttons: one table of what each does, and in which pump modes.

A button is the user's own authority over the pump (BRIEF: only a person
holding the pump can press one), so it needs no key; what it may do still
depends on the pump's mode.  Like the remote's
:data:`~firmware_sim.commands.COMMAND_TABLE`, :data:`BUTTON_TABLE` is the
one place a reviewer reads that rule:

==================== ============================ ==============================
button               pump modes                   action
==================== ============================ ==============================
PAIR                 RUNNING, PAIRING             open pairing mode (SPEC §9.5)
CONFIRM_CODE         RUNNING, PAIRING             the codes match: store the remote
REJECT_CODE          RUNNING, PAIRING             the codes differ: a failed attempt
REMOTE_BOLUS_ON      RUNNING, PAIRING             allow remote boluses
REMOTE_BOLUS_OFF     RUNNING, PAIRING             refuse remote boluses
UNPAIR_ALL           RUNNING, PAIRING             erase every remote's key (S11)
CANCEL_BOLUS         RUNNING, PAIRING             stop the running bolus
SUSPEND              RUNNING, PAIRING             stop all delivery
RESUME               RUNNING, PAIRING             restart basal
ENROL_PRESCRIBER     RUNNING, PAIRING             trust a prescriber key (S6)
CLEAR_ALARMS         RUNNING, PAIRING             acknowledge the alarms shown
RESET_STORAGE        SAFE_STATE                   erase storage and boot afresh (S8)
==================== ============================ ==============================

A press in a mode its row does not list does nothing.
``tests/test_command_table.py`` checks this docstring against the table.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final, Protocol

from pumpguard.protocol import wire

from .commands import PumpMode
from .delivery import BolusEnded, DeliveryEngine, DeliveryRefused
from .panel import Button, FrontPanel
from .state import OutcomeRecord

__all__ = ["BUTTON_TABLE", "ButtonRule", "PanelPump", "press"]


class PanelPump(Protocol):
    """The pump as its buttons see it (firmware_sim/pump.py): reads, and the
    writes the pump makes in its commit order (SPEC §13.3)."""

    panel: FrontPanel

    @property
    def mode(self) -> PumpMode: ...
    @property
    def delivery(self) -> DeliveryEngine: ...
    def open_pairing(self, now: float) -> None: ...
    def confirm_pairing(self, now: float) -> None: ...
    def reject_pairing(self, now: float) -> None: ...
    def set_remote_bolus(self, enabled: bool, now: float) -> None: ...
    def enrol_prescriber(self, key: bytes, now: float) -> None: ...
    def unpair_all(self, now: float) -> None: ...
    def settle_bolus(self, ended: BolusEnded, now: float) -> OutcomeRecord: ...
    def persist_delivery(self) -> None: ...
    def clear_alarms(self) -> None: ...
    def reset_storage(self, now: float) -> None: ...


#: What a button does: ``(pump, argument, now)``.
Action = Callable[[PanelPump, bytes, float], None]


@dataclass(frozen=True)
class ButtonRule:
    """One row of :data:`BUTTON_TABLE`."""

    button: Button
    modes: frozenset[PumpMode]
    action: Action


def _cancel_bolus(pump: PanelPump, argument: bytes, now: float) -> None:
    if pump.delivery.active_bolus is not None:
        pump.settle_bolus(pump.delivery.cancel_bolus(), now)


def _suspend(pump: PanelPump, argument: bytes, now: float) -> None:
    for event in pump.delivery.suspend():
        if isinstance(event, BolusEnded):
            pump.settle_bolus(event, now)
    pump.persist_delivery()


def _resume(pump: PanelPump, argument: bytes, now: float) -> None:
    try:
        pump.delivery.resume(now)
    except DeliveryRefused:
        pump.panel.show("info", "cannot resume now")
    pump.persist_delivery()


def _enrol_prescriber(pump: PanelPump, argument: bytes, now: float) -> None:
    if len(argument) != wire.ED25519_PUBLIC_LEN:
        pump.panel.show("info", "prescriber key not recognised")
        return
    pump.enrol_prescriber(argument, now)


_OPERATING: Final = frozenset({PumpMode.RUNNING, PumpMode.PAIRING})

BUTTON_TABLE: Final[Mapping[Button, ButtonRule]] = {
    rule.button: rule
    for rule in (
        ButtonRule(Button.PAIR, _OPERATING, lambda p, a, now: p.open_pairing(now)),
        ButtonRule(Button.CONFIRM_CODE, _OPERATING, lambda p, a, now: p.confirm_pairing(now)),
        ButtonRule(Button.REJECT_CODE, _OPERATING, lambda p, a, now: p.reject_pairing(now)),
        ButtonRule(
            Button.REMOTE_BOLUS_ON, _OPERATING, lambda p, a, now: p.set_remote_bolus(True, now)
        ),
        ButtonRule(
            Button.REMOTE_BOLUS_OFF, _OPERATING, lambda p, a, now: p.set_remote_bolus(False, now)
        ),
        ButtonRule(Button.UNPAIR_ALL, _OPERATING, lambda p, a, now: p.unpair_all(now)),
        ButtonRule(Button.CANCEL_BOLUS, _OPERATING, _cancel_bolus),
        ButtonRule(Button.SUSPEND, _OPERATING, _suspend),
        ButtonRule(Button.RESUME, _OPERATING, _resume),
        ButtonRule(Button.ENROL_PRESCRIBER, _OPERATING, _enrol_prescriber),
        ButtonRule(Button.CLEAR_ALARMS, _OPERATING, lambda p, a, now: p.clear_alarms()),
        ButtonRule(
            Button.RESET_STORAGE,
            frozenset({PumpMode.SAFE_STATE}),
            lambda p, a, now: p.reset_storage(now),
        ),
    )
}


def press(pump: PanelPump, button: Button, argument: bytes, now: float) -> None:
    """Act on one press, if the button's row allows the pump's mode."""
    rule = BUTTON_TABLE[button]
    if pump.mode in rule.modes:
        rule.action(pump, argument, now)
