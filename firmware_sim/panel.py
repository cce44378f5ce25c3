"""The pump's front panel: a display and buttons only a person at the pump can use.

Everything that needs physical presence goes through here: entering pairing
mode, confirming or rejecting the comparison code, enabling remote bolus,
enrolling the prescriber's key, unpairing, cancelling, clearing alarms.  The
link can never press a button.  Tests press buttons directly; ``pumpsim``
prints the display to the terminal and maps its flags (``--auto-confirm``,
``--remote-bolus``, ``--prescriber-key``) onto the same buttons, saying
loudly which user action each one simulates.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

#: How many alert lines the display keeps.
DISPLAY_LINES = 16


class Button(enum.Enum):
    """The buttons and menu items of the front panel."""

    #: Menu > Remote > Pair: enter pairing mode (times out).
    PAIR = enum.auto()
    #: "The code matches": confirm the pairing on screen.
    CONFIRM_CODE = enum.auto()
    #: "The code does not match" or "cancel pairing".
    REJECT_CODE = enum.auto()
    #: Menu > Remote > Remote bolus on / off.
    REMOTE_BOLUS_ON = enum.auto()
    REMOTE_BOLUS_OFF = enum.auto()
    #: Menu > Remote > Unpair all remotes (erases their keys).
    UNPAIR_ALL = enum.auto()
    #: Stop the bolus being delivered.
    CANCEL_BOLUS = enum.auto()
    SUSPEND = enum.auto()
    RESUME = enum.auto()
    #: Acknowledge alarms shown on the display.
    CLEAR_ALARMS = enum.auto()
    #: After a storage fault: erase storage and start over (remote bolus off).
    RESET_STORAGE = enum.auto()
    #: Menu > Prescriber > Enrol key; the argument is the Ed25519 public key.
    ENROL_PRESCRIBER = enum.auto()


@dataclass(frozen=True)
class PanelEvent:
    """Something the pump put on its display, for tests and the terminal."""

    kind: str
    text: str


class FrontPanel:
    """Display lines plus a queue of pending button presses.

    The firmware owns the panel and handles presses in :meth:`Pump.tick`
    (firmware_sim.pump); this class only records what a user did and what
    the pump showed, so it never races the firmware's state machine.
    """

    def __init__(self) -> None:
        self._presses: deque[tuple[Button, bytes]] = deque(maxlen=32)
        self.lines: deque[PanelEvent] = deque(maxlen=DISPLAY_LINES)
        #: The comparison code on screen during pairing, else None.
        self.code_shown: str | None = None
        #: Called for every event shown (pumpsim prints them).
        self.listeners: list[Callable[[PanelEvent], None]] = []

    def press(self, button: Button, argument: bytes = b"") -> None:
        """A person pressed ``button`` (``argument``: e.g. a prescriber key to enrol)."""
        self._presses.append((button, argument))

    def take_presses(self) -> list[tuple[Button, bytes]]:
        presses = list(self._presses)
        self._presses.clear()
        return presses

    def show(self, kind: str, text: str) -> None:
        event = PanelEvent(kind, text)
        self.lines.append(event)
        for listener in self.listeners:
            listener(event)

    def shown(self, kind: str) -> list[str]:
        """Texts of the events of ``kind`` still on the display."""
        return [event.text for event in self.lines if event.kind == kind]
