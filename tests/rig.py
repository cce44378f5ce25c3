"""Names the fail-safe tests import, over the one harness in ``pumpguard.host.inmemory``."""

from __future__ import annotations

from pumpguard.host.client import RemoteClient
from pumpguard.host.inmemory import TICK_S, DirectLink, PanelUser, Rig, seeded_random
from pumpguard.host.inmemory import SimulatedClock as FakeClock

__all__ = ["TICK_S", "DirectLink", "FakeClock", "PanelUser", "Rig", "pair", "seeded_random"]


def pair(rig: Rig, client: RemoteClient) -> str:
    """Pair ``client`` with the rig's pump, the user comparing codes; return the code."""
    return rig.pair(client)
