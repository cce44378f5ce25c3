"""A pump and a remote wired together in one thread, on one simulated clock.

The remote's :class:`~host.client.RemoteClient` talks to a real
:class:`~firmware_sim.pump.Pump` through :class:`DirectLink`: bytes written
by the remote go straight into the pump, and a read that finds nothing
waiting advances the shared clock (ticking the pump) instead of sleeping.
Every test is therefore deterministic and fast, even a 10 U bolus that takes
400 s of pump time.  Flash and motor are in memory and survive a simulated
reboot, so crash tests can cut the power and boot again.

The front panel is operated by :class:`PanelUser`, a simulated person who
answers "a remote asks to pair" by opening pairing mode and confirms the
code only if it matches the one the remote showed (like a careful user).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

from pumpguard.firmware_sim import config
from pumpguard.firmware_sim.flash import Flash
from pumpguard.firmware_sim.motor import Motor
from pumpguard.firmware_sim.panel import Button
from pumpguard.firmware_sim.pump import Pump
from pumpguard.host.client import RemoteClient
from pumpguard.host.journal import Journal
from pumpguard.host.keystore import KeyStore
from pumpguard.host.transport import RecordChannel

#: The pump is ticked at least this often while the clock runs.
TICK_S = 0.05


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def seeded_random(label: str) -> Callable[[int], bytes]:
    """Deterministic "randomness" (SHA-256 in counter mode) for reproducible tests."""
    state = {"counter": 0}

    def random_bytes(n: int) -> bytes:
        out = b""
        while len(out) < n:
            state["counter"] += 1
            out += hashlib.sha256(f"{label}/{state['counter']}".encode()).digest()
        return out[:n]

    return random_bytes


@dataclass
class PanelUser:
    """A person at the pump.  ``remote_code`` is what the remote's screen shows."""

    opens_pairing: bool = True
    remote_code: str | None = None
    #: Confirms whatever is shown (``pumpsim --auto-confirm``): for MITM tests, False.
    trusts_blindly: bool = False
    pressed: list[Button] = field(default_factory=list)

    def act(self, pump: Pump) -> None:
        panel = pump.panel
        if self.opens_pairing and panel.shown("pairing-request") and pump.mode.name == "RUNNING":
            panel.lines.clear()
            self._press(pump, Button.PAIR)
        shown = panel.code_shown
        if shown is not None and Button.CONFIRM_CODE not in self.pressed[-1:]:
            if self.trusts_blindly or shown == self.remote_code:
                self._press(pump, Button.CONFIRM_CODE)
            elif self.remote_code is not None:
                self._press(pump, Button.REJECT_CODE)

    def _press(self, pump: Pump, button: Button) -> None:
        self.pressed.append(button)
        pump.panel.press(button)


class Rig:
    """One pump, its flash and motor, and a clock; remotes attach with :meth:`remote`."""

    def __init__(self, *, seed: str = "rig") -> None:
        self.clock = FakeClock()
        self.flash = Flash.in_memory(
            sector_size=config.FLASH_SECTOR_SIZE, sector_count=config.FLASH_SECTOR_COUNT
        )
        self.motor = Motor.in_memory()
        self.random = seeded_random(seed + "/pump")
        self.user = PanelUser()
        self.pump = self.boot()
        #: Bytes from the pump not yet read by the remote.
        self.to_remote = bytearray()
        #: Every chunk the remote wrote, for replay attacks.
        self.from_remote: list[bytes] = []

    def boot(self) -> Pump:
        self.pump = Pump.boot(
            flash=self.flash, motor=self.motor, random_bytes=self.random, now=self.clock()
        )
        return self.pump

    def reboot(self) -> Pump:
        """Power off and on: RAM (sessions, challenges) is lost, flash and motor stay."""
        self.flash.power_on()
        self.to_remote.clear()
        return self.boot()

    def press(self, *buttons: Button) -> None:
        for button in buttons:
            self.pump.panel.press(button)
        self.tick()

    def tick(self) -> None:
        self.user.act(self.pump)
        self.pump.tick(self.clock())
        self.to_remote += self.pump.data_to_send()

    def advance(self, seconds: float) -> None:
        """Let time pass, ticking the pump as its main loop would."""
        end = self.clock.now + seconds
        while self.clock.now < end:
            self.clock.now = min(end, self.clock.now + TICK_S)
            self.tick()

    def inject(self, data: bytes) -> None:
        """Bytes from anyone on the link into the pump (attackers use this)."""
        self.pump.receive_data(data, self.clock())
        self.tick()

    def remote(self, keys_dir: str, *, seed: str = "remote") -> RemoteClient:
        link = DirectLink(self)
        return RemoteClient(
            RecordChannel(link, clock=self.clock),
            KeyStore.open(keys_dir),
            Journal.open(keys_dir),
            clock=self.clock,
            sleep=self.advance,
            random_bytes=seeded_random(seed),
        )

    @property
    def ledger_pulses(self) -> int:
        delivery = self.pump.delivery
        return delivery.basal_pulses_delivered + delivery.bolus_pulses_delivered


class DirectLink:
    """The remote's end of the wire; implements host.transport.Link."""

    def __init__(self, rig: Rig) -> None:
        self._rig = rig
        #: When False, the pump's replies are lost (a dead link from the pump).
        self.replies_arrive = True
        #: When False, the remote's frames are lost.
        self.requests_arrive = True

    def write(self, data: bytes) -> None:
        self._rig.from_remote.append(data)
        if self.requests_arrive:
            self._rig.inject(data)

    def read(self, timeout: float) -> bytes:
        rig = self._rig
        end = rig.clock.now + timeout
        while not rig.to_remote and rig.clock.now < end:
            rig.clock.now = min(end, rig.clock.now + TICK_S)
            rig.tick()
        data = bytes(rig.to_remote)
        rig.to_remote.clear()
        return data if self.replies_arrive else b""

    def close(self) -> None:
        return None


def pair(rig: Rig, client: RemoteClient) -> str:
    """Pair ``client`` with the rig's pump, the user comparing codes; return the code."""

    def confirm(code: str) -> bool:
        rig.user.remote_code = code
        return True

    rig.user.remote_code = None  # a new pairing: the user has seen no code yet
    return client.pair(confirm).code
