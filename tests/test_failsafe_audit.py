"""[fail-safe] 5: a paired remote cannot erase the audit trail of its boluses (S10, S9).

The bug: every authenticated over-limit prepare and every bad policy upload
appended its own signed entry; about 600 of them evicted every delivery
record from the ring, and each sector the ring reused was one more erase of
the flash.

What these tests hold the fix to (SPEC §13.4, firmware_sim/audit.py):

* authenticated refusals are counted like link rejections (one "refusals"
  entry now and then, every refusal counted exactly once);
* an aggregated entry never evicts a delivery or security record, and the
  ring holds at most one sector's worth of them: 10 000 over-limit prepares
  through a day evict 0 delivery records and erase 0 sectors;
* the pump alerts when records the host has not read are about to go;
* the simulated flash wears out (per-sector erase counts, an endurance), and
  a worn sector is retired by the audit ring and the snapshot store: the
  pump keeps running basal and boluses, and its log still verifies.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from failsafe_helpers import Remote, fast_forward, flash_audit, paired
from rig import Rig

from pumpguard.firmware_sim import config
from pumpguard.firmware_sim.audit import (
    REFUSALS_EVENT,
    AuditLog,
    low_priority_quota,
    retained_protected,
)
from pumpguard.firmware_sim.flash import Flash, FlashWorn, StorageWorn
from pumpguard.firmware_sim.panel import Button
from pumpguard.firmware_sim.store import SnapshotStore
from pumpguard.host.client import UNASSIGNED_ID, PumpRefused
from pumpguard.protocol import (
    BolusPrepare,
    LimitPolicy,
    Outcome,
    RefusalCode,
    encode_policy,
    sign_policy,
    wire,
)
from pumpguard.protocol.audit_entry import AuditEntry, verify_entries

#: Over the factory single-bolus limit: refused after authentication.
OVER = wire.FACTORY_MAX_BOLUS_PULSES + 1
DAY_S = 86_400.0


@pytest.fixture
def bench(tmp_path: Path) -> Iterator[tuple[Rig, Remote]]:
    rig = Rig(seed="fail-safe-5")
    remote = paired(rig, tmp_path / "keys", "remote")
    rig.press(Button.REMOTE_BOLUS_ON)
    remote.client.status()  # a session, and the audit key pinned
    yield rig, remote
    remote.journal.close()


def region_erases(flash: Flash, region: tuple[int, int]) -> int:
    first, count = region
    return sum(flash.erase_count(sector) for sector in range(first, first + count))


def deliveries(entries: list[AuditEntry]) -> set[int]:
    """Seqs of delivery records (bolus start and end entries)."""
    return {entry.seq for entry in entries if entry.event.startswith("bolus_")}


def refusal_count(entries: list[AuditEntry], kind: str) -> int:
    return sum(int(entry.fields.get(kind, 0)) for entry in entries if entry.event == REFUSALS_EVENT)


def verify(rig: Rig, entries: list[AuditEntry]) -> None:
    key = Ed25519PrivateKey.from_private_bytes(rig.pump.persistent.audit_key)
    verify_entries([entry.signed for entry in entries], key.public_key().public_bytes_raw())


def fill_ring_with_deliveries(rig: Rig, remote: Remote) -> None:
    """Real 1-pulse boluses until the ring has wrapped: every sector then holds
    delivery records, so any erase would evict some."""
    while not flash_audit(rig)[0].seq:
        for _ in range(25):
            assert remote.client.bolus(1).outcome is Outcome.DELIVERED


def over_limit_prepare(remote: Remote, seq: int) -> None:
    cid = seq.to_bytes(wire.COMMAND_SEQ_LEN, "big") + bytes(wire.COMMAND_NONCE_LEN)
    with pytest.raises(PumpRefused) as refused:
        remote.client.request(BolusPrepare(UNASSIGNED_ID, cid, OVER))
    assert refused.value.code is RefusalCode.OVER_SINGLE_LIMIT


# --- Floods of authenticated refusals -----------------------------------------------


def test_fail_safe_5_ten_thousand_over_limit_prepares_evict_no_delivery_record(
    bench: tuple[Rig, Remote],
) -> None:
    """[fail-safe] 5: 10^4 over-limit prepares in a day: 0 delivery records evicted, 0 erases
    of the audit ring or the main store, a handful of entries, every refusal counted."""
    rig, remote = bench
    fill_ring_with_deliveries(rig, remote)
    assert rig.pump.panel.shown("alert"), "the unread records were announced"
    before = flash_audit(rig)
    kept = deliveries(before)
    assert len(kept) >= retained_protected(config.FLASH_SECTOR_SIZE, config.FLASH_AUDIT[1], 206), (
        "the ring holds its stated minimum of protected records"
    )
    audit_erases = region_erases(rig.flash, config.FLASH_AUDIT)
    main_erases = region_erases(rig.flash, config.FLASH_MAIN_STORE)
    delivery_erases = region_erases(rig.flash, config.FLASH_DELIVERY_STORE)
    basal = rig.pump.delivery.basal_pulses_delivered
    next_seq = rig.pump.audit.next_seq

    flood = 10_000
    for n in range(flood):
        over_limit_prepare(remote, 10**6 + n)  # 8.64 s apart: one day of flood
        rig.clock.now += DAY_S / flood
        rig.tick()

    after = flash_audit(rig)
    assert kept <= deliveries(after), "a delivery record was evicted"
    assert region_erases(rig.flash, config.FLASH_AUDIT) == audit_erases
    assert region_erases(rig.flash, config.FLASH_MAIN_STORE) == main_erases
    written = rig.pump.audit.next_seq - next_seq
    assert written <= low_priority_quota(config.FLASH_SECTOR_SIZE)
    counted = refusal_count([e for e in after if e.seq >= next_seq], "over_limit")
    counted += rig.pump.audit.pending_refusals.get("over_limit", 0)
    assert counted == flood, "every refusal is counted exactly once"
    verify(rig, after)
    # Basal ran throughout (20 pulses/h: 480 a day); its own commits are the only erases.
    assert rig.pump.delivery.basal_pulses_delivered - basal >= 470
    print(
        f"\n[fail-safe] 5 figures: {flood} over-limit prepares over 24 h: "
        f"{written} audit entries, audit-ring erases "
        f"{region_erases(rig.flash, config.FLASH_AUDIT) - audit_erases}, main-store erases "
        f"{region_erases(rig.flash, config.FLASH_MAIN_STORE) - main_erases}, delivery-store "
        f"erases (basal) {region_erases(rig.flash, config.FLASH_DELIVERY_STORE) - delivery_erases}"
        f", delivery records evicted {len(kept - deliveries(after))} of {len(kept)}"
    )


def test_fail_safe_5_bad_policy_uploads_are_counted_not_logged_one_by_one(
    bench: tuple[Rig, Remote],
) -> None:
    """[fail-safe] 5: 1000 forged and 1000 rolled-back policies: a few entries, all counted."""
    rig, remote = bench
    prescriber = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    rig.pump.panel.press(Button.ENROL_PRESCRIBER, prescriber.public_key().public_bytes_raw())
    rig.tick()
    policy = LimitPolicy(1, 100, 150, 500)
    body = encode_policy(policy, for_pump=rig.pump.pump_id)
    remote.client.upload_policy(body, sign_policy(body, prescriber))
    forged = sign_policy(body, Ed25519PrivateKey.from_private_bytes(bytes(32)))
    next_seq = rig.pump.audit.next_seq
    main_erases = region_erases(rig.flash, config.FLASH_MAIN_STORE)
    for _ in range(1000):
        with pytest.raises(PumpRefused):
            remote.client.upload_policy(body, forged)
        with pytest.raises(PumpRefused):
            remote.client.upload_policy(body, sign_policy(body, prescriber))  # rollback
        rig.clock.now += 1.0
        rig.tick()
    rig.clock.now += 3600.0
    rig.tick()
    entries = [e for e in flash_audit(rig) if e.seq >= next_seq]
    assert len(entries) <= 8, [e.event for e in entries]
    assert {e.event for e in entries} == {REFUSALS_EVENT}
    assert refusal_count(entries, "bad_policy") == 1000
    assert refusal_count(entries, "old_policy") == 1000
    assert region_erases(rig.flash, config.FLASH_MAIN_STORE) == main_erases


# --- The ring: priority, quota, unread records ------------------------------------------

SECTOR = 1024
SECTORS = 6


def small_log(flash: Flash, alerts: list[str] | None = None) -> AuditLog:
    key = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    return AuditLog(flash, 0, SECTORS, key, on_alert=None if alerts is None else alerts.append)


def delivery(n: int) -> dict[str, int | bytes]:
    return {"pulses": n % 200, "requested_pulses": 200, "cmd_id": n.to_bytes(16, "big")}


def test_fail_safe_5_aggregated_entries_never_evict_a_protected_one_and_stay_within_quota() -> None:
    flash = Flash.in_memory(sector_size=SECTOR, sector_count=SECTORS)
    log = small_log(flash)
    for n in range(40):  # wraps the ring: every sector holds deliveries
        log.append("bolus_delivered", delivery(n), now_ms=n)
    protected = [e.seq for e in log.entries()]
    erases = flash.erases
    total = 0
    now = 0
    for _day in range(400):  # more than a year of flood, with a refusal a second
        for _ in range(10):
            now += 8_640_000 // 10
            log.note_refusal("over_limit", now_ms=now)
            log.note_rejection("bad_tag", now_ms=now)
            total += 1
        log.poll(now)
    entries = log.entries()
    assert [e.seq for e in entries if e.event == "bolus_delivered"] == protected
    low = [e for e in entries if e.event != "bolus_delivered"]
    assert len(low) <= low_priority_quota(SECTOR)
    assert flash.erases == erases, "an aggregated entry erased a sector"
    written = refusal_count(low, "over_limit") + log.pending_refusals.get("over_limit", 0)
    assert written == total

    # A delivery then opens a sector (evicting the oldest deliveries, by the
    # ring's rule); the held counts follow it once allowed.
    for n in range(40, 60):
        log.append("bolus_delivered", delivery(n), now_ms=now + n)
    log.poll(now + 10**9)
    entries = log.entries()
    written = refusal_count(entries, "over_limit") + log.pending_refusals.get("over_limit", 0)
    assert written == total
    assert sum(1 for e in entries if e.event != "bolus_delivered") <= low_priority_quota(SECTOR)
    verify_entries([e.signed for e in entries], log.public_key_bytes)


def test_fail_safe_5_the_pump_alerts_before_unread_records_are_overwritten() -> None:
    flash = Flash.in_memory(sector_size=SECTOR, sector_count=SECTORS)
    alerts: list[str] = []
    log = small_log(flash, alerts)
    n = 0
    while not alerts:
        log.append("bolus_delivered", delivery(n), now_ms=n)
        n += 1
    assert "not yet read" in alerts[0]
    assert log.entries()[0].seq == 0, "warned before the first unread record went"
    # The host reads everything: no more alerts until unread records are at risk again.
    seq = 0
    while True:
        signed, seq = log.entry_at_or_after(seq)
        if not signed:
            break
    assert log.unread_at_risk == 0
    alerts.clear()
    for _ in range(4):
        log.append("bolus_delivered", delivery(n), now_ms=n)
        n += 1
    assert alerts == []


# --- Wear -------------------------------------------------------------------------------


def test_fail_safe_5_flash_sectors_wear_out_after_their_endurance() -> None:
    flash = Flash.in_memory(sector_size=64, sector_count=3, endurance=5)
    flash.program(64, b"\x00")
    for _ in range(5):
        flash.erase(1)
    assert flash.erase_count(1) == 5
    flash.program(64, b"\x0f")
    with pytest.raises(FlashWorn) as worn:
        flash.erase(1)
    assert worn.value.sector == 1
    assert flash.is_worn(1)
    assert flash.read(64, 1) == b"\x0f", "a failed erase changes nothing"
    with pytest.raises(FlashWorn):
        flash.program(65, b"\x00")
    with pytest.raises(FlashWorn):
        flash.program(60, bytes(8))  # a range reaching into it
    flash.erase(0)
    flash.erase(2)  # the others go on
    assert flash.erases == 7
    fresh = Flash.in_memory(sector_size=64, sector_count=3)
    fresh.age(0, fresh.endurance)
    with pytest.raises(FlashWorn):
        fresh.erase(0)


def test_fail_safe_5_the_snapshot_store_retires_worn_sectors_then_says_so() -> None:
    flash = Flash.in_memory(sector_size=256, sector_count=4, endurance=3)
    store = SnapshotStore(flash, 0, 4)
    payload = bytes(200)  # one record per sector: every commit erases one
    committed = b""
    failure: StorageWorn | None = None
    for n in range(100):
        try:
            store.commit(n.to_bytes(2, "big") + payload)
        except StorageWorn as exc:
            failure = exc
            break
        committed = n.to_bytes(2, "big") + payload
    assert failure is not None
    assert "worn out" in str(failure)
    assert SnapshotStore(flash, 0, 4).load() == committed, "the last commit stays"
    assert sum(flash.is_worn(sector) for sector in range(4)) == 3


def test_fail_safe_5_the_audit_ring_retires_worn_sectors_and_still_verifies() -> None:
    flash = Flash.in_memory(sector_size=SECTOR, sector_count=SECTORS)
    log = small_log(flash)
    flash.age(2, flash.endurance)
    flash.age(4, flash.endurance)
    for n in range(100):
        log.append("bolus_delivered", delivery(n), now_ms=n)
    assert flash.is_worn(2)
    assert flash.is_worn(4)
    entries = small_log(flash).entries()  # as a boot reads it
    assert entries[-1].seq == 99
    verify_entries([e.signed for e in entries], log.public_key_bytes)
    assert log.usable_sectors == SECTORS - 2
    for sector in (0, 1, 3):
        flash.age(sector, flash.endurance)

    def fill() -> None:
        for n in range(100, 200):
            log.append("bolus_delivered", delivery(n), now_ms=n)

    with pytest.raises(StorageWorn):
        fill()


def test_fail_safe_5_a_worn_sector_is_a_contained_fault_basal_keeps_running(
    bench: tuple[Rig, Remote],
) -> None:
    """[fail-safe] 5: worn sectors in the main store and the audit ring: the pump
    retires them, basal runs on, boluses work, a reboot reads the rest."""
    rig, remote = bench
    flash = rig.flash
    main_first, _ = config.FLASH_MAIN_STORE
    audit_first, _ = config.FLASH_AUDIT
    for sector in (main_first + 1, main_first + 2, audit_first + 1, audit_first + 2):
        flash.age(sector, flash.endurance)
    basal = rig.pump.delivery.basal_pulses_delivered
    delivered = 0
    for _ in range(40):  # enough commits and entries to reach the worn sectors
        delivered += remote.client.bolus(2).delivered_pulses
        fast_forward(rig, 60)
    assert delivered == 80
    worn = [s for s in range(flash.sector_count) if flash.is_worn(s)]
    assert worn == [main_first + 1, main_first + 2, audit_first + 1, audit_first + 2]
    hours = 3
    fast_forward(rig, hours * 3600)
    ran = rig.pump.delivery.basal_pulses_delivered - basal
    assert ran >= config.DEFAULT_BASAL_PULSES_PER_HOUR * (hours + 0.5)
    rig.reboot()
    assert rig.pump.mode.name == "RUNNING"
    assert remote.client.bolus(2).outcome is Outcome.DELIVERED
    entries = flash_audit(rig)
    verify(rig, entries)
    assert rig.pump.delivery.bolus_pulses_delivered == 82
