"""A pump and its remotes in one process, on one simulated clock.

:class:`Rig` boots the real :class:`~pumpguard.firmware_sim.pump.Pump` on
in-memory flash and motor (or a flash image file), and remotes attach to it
with :meth:`Rig.attach`: a real :class:`~pumpguard.host.client.RemoteClient`
whose link (:class:`DirectLink`) puts the bytes it writes straight into the
pump.  A read that finds nothing waiting advances the shared clock, ticking
the pump as its main loop would, instead of sleeping; so a 10 U bolus that
takes 400 s of pump time runs in a blink, and the same seeds give the same
run byte for byte.  Flash and motor survive :meth:`Rig.reboot`, so a tester
can cut the power at any flash write and boot again.

This is for people who test or attack the pump from Python: the rig keeps a
tap on the wire (:attr:`Rig.from_remote`, :attr:`DirectLink.sent` and
:attr:`DirectLink.received`) and :meth:`Rig.inject` puts anyone's bytes on
it.  :class:`~pumpguard.host.rawremote.RawRemote` drives a session one
record at a time, without the client library.

The front panel is operated by :class:`PanelUser`, a simulated person who
answers "a remote asks to pair" by opening pairing mode and confirms the
code only if it matches the one the remote showed (like a careful user).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pumpguard.firmware_sim import config
from pumpguard.firmware_sim.flash import Flash
from pumpguard.firmware_sim.motor import Motor
from pumpguard.firmware_sim.panel import Button
from pumpguard.firmware_sim.pump import Pump
from pumpguard.protocol import FrameDecoder, RandomBytes, encode_frame

from .client import RemoteClient
from .journal import Journal
from .keystore import KeyStore
from .transport import RecordChannel

__all__ = [
    "TICK_S",
    "DirectLink",
    "PanelUser",
    "Remote",
    "Rig",
    "SimulatedClock",
    "records_in",
    "seeded_random",
]

#: The pump is ticked at least this often while the clock runs.
TICK_S = 0.05
#: Where the simulated clock starts: any value works, a round one reads well in logs.
_START_S = 1000.0


class SimulatedClock:
    """The one clock of the rig: it moves only when the rig (or a test) moves it."""

    def __init__(self, start: float = _START_S) -> None:
        #: Seconds; assign to jump.
        self.now = start

    def __call__(self) -> float:
        return self.now


def seeded_random(label: str) -> RandomBytes:
    """Deterministic "randomness" (SHA-256 in counter mode): reproducible runs, never keys."""
    counter = 0

    def random_bytes(n: int) -> bytes:
        nonlocal counter
        out = b""
        while len(out) < n:
            counter += 1
            out += hashlib.sha256(f"{label}/{counter}".encode()).digest()
        return out[:n]

    return random_bytes


def records_in(data: bytes) -> list[bytes]:
    """The records in a byte stream of whole frames (SPEC §3), for reading the wire tap."""
    decoder = FrameDecoder()
    decoder.receive_data(data)
    return list(iter(decoder.next_record, None))


@dataclass
class PanelUser:
    """A person at the pump.  ``remote_code`` is what the remote's screen shows."""

    opens_pairing: bool = True
    remote_code: str | None = None
    #: Confirms whatever is shown (``pumpsim --auto-confirm``): for MITM tests, False.
    trusts_blindly: bool = False
    pressed: list[Button] = field(default_factory=list)

    def act(self, pump: Pump) -> None:
        """Look at the display and press what this person would press."""
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


@dataclass
class Remote:
    """A remote attached to a rig: its client and what the client was built from."""

    rig: Rig
    client: RemoteClient
    link: DirectLink
    keys: KeyStore
    journal: Journal
    #: The keys directory (key, pairing and journal files).
    path: Path

    def close(self) -> None:
        """Release the journal's lock, so another client may open the directory."""
        self.journal.close()


class Rig:
    """One pump, its flash, motor and front-panel user, and the clock they share.

    Args:
        seed: seeds the pump's randomness (see :func:`seeded_random`).
        random_bytes: the pump's randomness instead, e.g. ``random.Random(0).randbytes``.
        flash_path: a flash image file (every program and erase written
            through and fsync'ed, as ``pumpsim`` runs); ``None`` for flash
            in memory.  Either way the device's geometry (``config.FLASH_*``).
    """

    def __init__(
        self,
        *,
        seed: str = "rig",
        random_bytes: RandomBytes | None = None,
        flash_path: Path | None = None,
    ) -> None:
        self.clock = SimulatedClock()
        size, count = config.FLASH_SECTOR_SIZE, config.FLASH_SECTOR_COUNT
        self.flash = (
            Flash.in_memory(sector_size=size, sector_count=count)
            if flash_path is None
            else Flash.open_file(flash_path, sector_size=size, sector_count=count)
        )
        self.motor = Motor.in_memory()
        self.random = random_bytes or seeded_random(seed + "/pump")
        self.user = PanelUser()
        #: Bytes from the pump not yet read by any remote.
        self.to_remote = bytearray()
        #: Every chunk any attached remote wrote, in order: the recording for replays.
        self.from_remote: list[bytes] = []
        self.remotes: list[Remote] = []
        self.pump = self.boot()

    # --- the pump ---------------------------------------------------------------------

    def boot(self) -> Pump:
        """Power on: a new firmware instance on the same flash and motor."""
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
        """Someone presses ``buttons`` at the pump; its main loop runs once."""
        for button in buttons:
            self.pump.panel.press(button)
        self.tick()

    def tick(self) -> None:
        """One turn of the pump's main loop at the clock's time, the user watching."""
        self.user.act(self.pump)
        self.pump.tick(self.clock())
        self.to_remote += self.pump.data_to_send()

    def advance(self, seconds: float, step: float = TICK_S) -> None:
        """Let time pass, ticking the pump every ``step`` (coarser is cheaper)."""
        end = self.clock.now + seconds
        while self.clock.now < end:
            self.clock.now = min(end, self.clock.now + step)
            self.tick()

    @property
    def ledger_pulses(self) -> int:
        """Every pulse the firmware's ledger counts (the motor is the witness to compare)."""
        delivery = self.pump.delivery
        return delivery.basal_pulses_delivered + delivery.bolus_pulses_delivered

    # --- the wire -----------------------------------------------------------------------

    def inject(self, data: bytes) -> None:
        """Bytes from anyone on the link into the pump (attackers use this)."""
        self.pump.receive_data(data, self.clock())
        self.tick()

    def take_output(self) -> bytes:
        """What the pump wrote that no remote has read, taken off the wire."""
        out = bytes(self.to_remote)
        self.to_remote.clear()
        return out

    def send(self, record: bytes) -> list[bytes]:
        """Put one record on the link, as anyone may; return the records answered."""
        self.inject(encode_frame(record))
        return records_in(self.take_output())

    # --- remotes ------------------------------------------------------------------------

    def attach(
        self,
        path: Path,
        *,
        seed: str = "remote",
        link: DirectLink | None = None,
        journal: Journal | None = None,
        sleep: Callable[[float], None] | None = None,
    ) -> Remote:
        """A remote with its keys in ``path``, on this rig's clock (not yet paired).

        Args:
            seed: seeds the client's randomness and a new key's (``seed + "/key"``).
            link: the remote's end of the wire, for a subclass that loses or
                alters bytes; by default a plain :class:`DirectLink`.
            journal: a journal opened by the caller (e.g. a subclass).
            sleep: the client's sleep; by default ``link.advance``.
        """
        keys = KeyStore.open(path, random_bytes=seeded_random(seed + "/key"))
        journal = journal if journal is not None else Journal.open(path)
        link = link if link is not None else DirectLink(self)
        client = RemoteClient(
            RecordChannel(link, clock=self.clock),
            keys,
            journal,
            clock=self.clock,
            sleep=sleep or link.advance,
            random_bytes=seeded_random(seed),
        )
        remote = Remote(self, client, link, keys, journal, Path(path))
        self.remotes.append(remote)
        return remote

    def pair(self, client: RemoteClient) -> str:
        """Pair ``client`` with the pump, the user comparing codes; return the code."""

        def confirm(code: str) -> bool:
            self.user.remote_code = code
            return True

        self.user.remote_code = None  # a new pairing: the user has seen no code yet
        return client.pair(confirm).code

    def paired_remote(
        self, path: Path, *, seed: str = "remote", remote_bolus: bool = True
    ) -> Remote:
        """A remote attached and paired; the user switches remote bolus on unless told not to."""
        remote = self.attach(path, seed=seed)
        self.pair(remote.client)
        if remote_bolus:
            self.press(Button.REMOTE_BOLUS_ON)
        return remote

    def close(self) -> None:
        """Close every attached remote's journal, then flash and motor."""
        for remote in self.remotes:
            remote.close()
        self.flash.close()
        self.motor.close()


class DirectLink:
    """The remote's end of the rig's wire (a :class:`~pumpguard.host.transport.Link`).

    Subclass it to lose, hold or rewrite bytes: :meth:`Rig.attach` takes any.
    """

    def __init__(self, rig: Rig) -> None:
        self.rig = rig
        #: When False, the pump's replies are lost (a dead link from the pump).
        self.replies_arrive = True
        #: When False, the remote's frames are lost.
        self.requests_arrive = True
        #: Every chunk this remote wrote, and every non-empty chunk it read.
        self.sent: list[bytes] = []
        self.received: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.sent.append(data)
        self.rig.from_remote.append(data)
        if self.requests_arrive:
            self.rig.inject(data)

    def read(self, timeout: float) -> bytes:
        """What the pump wrote, running the clock up to ``timeout`` until it writes."""
        rig = self.rig
        end = rig.clock.now + timeout
        while not rig.to_remote and rig.clock.now < end:
            rig.clock.now = min(end, rig.clock.now + TICK_S)
            rig.tick()
        data = rig.take_output()
        if not self.replies_arrive:
            return b""
        if data:
            self.received.append(data)
        return data

    def advance(self, seconds: float) -> None:
        """The client's sleep: time passes on the rig's clock."""
        self.rig.advance(seconds)

    def close(self) -> None:
        return None
