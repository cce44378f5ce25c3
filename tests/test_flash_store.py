"""Flash and snapshot store under power cuts and bit rot (S8).

Faults these tests stop:

* a power cut at *any* program or erase -- every one of a scenario's
  operations is cut in turn, with tears chosen from several seeds and with
  nothing / all of the operation done -- losing a committed snapshot, mixing
  two, reporting corruption that is not there, or blocking later commits;
* bit rot or tampering in the store making it return a payload that was
  never committed, ``None`` (factory defaults) after a commit, or silently an
  older payload when the newer one is provably lost;
* a reset of storage cut part-way bringing an old state back;
* a file-backed flash losing what completed when the process dies.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from pumpguard.firmware_sim.flash import ERASED, Flash, FlashError, PowerLoss, is_erased
from pumpguard.firmware_sim.store import RECORD_OVERHEAD, SnapshotStore, StorageCorrupt

REPO_ROOT = Path(__file__).resolve().parent.parent

#: Tear variants: from a seed (several), nothing done, half done, all done.
TEARS: list[tuple[int, float | None]] = [
    *((seed, None) for seed in range(8)),
    (0, 0.0),
    (0, 0.5),
    (0, 1.0),
]

# --- Flash -------------------------------------------------------------------------


def small_flash(seed: int = 0, sectors: int = 4, size: int = 64) -> Flash:
    return Flash.in_memory(sector_size=size, sector_count=sectors, seed=seed)


def test_program_only_clears_bits() -> None:
    flash = small_flash()
    flash.program(3, b"\x0f")
    flash.program(3, b"\x0f")  # The same value again changes nothing.
    flash.program(3, b"\x05")  # Clearing more bits is fine.
    with pytest.raises(FlashError, match="0 -> 1"):
        flash.program(2, b"\x00\x0f")  # Byte 3 would need bits set again.
    assert flash.read(2, 2) == b"\xff\x05", "a refused program must change nothing"


def test_erase_sets_one_whole_sector() -> None:
    flash = small_flash()
    flash.program(60, b"\x00" * 8)  # Spans sectors 0 and 1.
    flash.erase(0)
    assert flash.read(0, 64) == b"\xff" * 64
    assert flash.read(64, 4) == b"\x00" * 4


@pytest.mark.parametrize(("offset", "length"), [(-1, 1), (0, 257), (256, 1), (255, 2)], ids=str)
def test_out_of_range_is_refused(offset: int, length: int) -> None:
    flash = small_flash()
    with pytest.raises(FlashError):
        flash.read(offset, length)
    with pytest.raises(FlashError):
        flash.program(offset, b"\x00" * max(length, 1))


def test_bad_geometry_and_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="sector_size"):
        Flash.in_memory(sector_size=8, sector_count=2)
    flash = small_flash()
    with pytest.raises(FlashError):
        flash.erase(4)
    with pytest.raises(FlashError, match="empty"):
        flash.program(0, b"")
    with pytest.raises(ValueError, match="from 1"):
        flash.cut_power_at(0)
    with pytest.raises(ValueError, match="fraction"):
        flash.cut_power_at(1, keep=1.5)


def test_power_cut_tears_the_kth_operation_then_everything_fails() -> None:
    flash = small_flash()
    flash.cut_power_at(3, keep=0.5)
    flash.program(0, b"\x01")
    flash.erase(1)
    assert flash.operations == 2
    with pytest.raises(PowerLoss):
        flash.program(8, bytes(8))
    assert flash.operations == 3
    assert not flash.powered
    for operation in (lambda: flash.read(0, 1), lambda: flash.erase(0)):
        with pytest.raises(PowerLoss):
            operation()
    with pytest.raises(PowerLoss):
        flash.program(0, b"\x00")
    assert flash.operations == 3, "operations without power are not performed"
    flash.power_on()
    assert flash.read(8, 8) == bytes(4) + b"\xff" * 4, "half of the program happened"
    flash.program(16, b"\x00")  # And it works again.


def test_power_on_disarms_a_pending_cut() -> None:
    flash = small_flash()
    flash.cut_power_at(2)
    flash.program(0, b"\x00")
    flash.power_on()
    for sector in range(4):
        flash.erase(sector)


@pytest.mark.parametrize(("keep", "expected"), [(0.0, b"\xff" * 4), (1.0, b"\x00" * 4)])
def test_keep_fixes_how_much_of_the_torn_program_happens(keep: float, expected: bytes) -> None:
    flash = small_flash()
    flash.cut_power_at(1, keep=keep)
    with pytest.raises(PowerLoss):
        flash.program(0, bytes(4))
    flash.power_on()
    assert flash.read(0, 4) == expected


def test_torn_erase_with_keep_erases_a_prefix() -> None:
    flash = small_flash()
    flash.program(0, bytes(64))
    flash.cut_power_at(1, keep=0.25)
    with pytest.raises(PowerLoss):
        flash.erase(0)
    flash.power_on()
    assert flash.read(0, 64) == b"\xff" * 16 + bytes(48)


def tear_image(seed: int, operation: str) -> bytes:
    flash = small_flash(seed)
    flash.program(0, bytes(64))
    flash.cut_power_at(1)
    tear: Callable[[], None] = (
        (lambda: flash.program(64, bytes(64)))
        if operation == "program"
        else (lambda: flash.erase(0))
    )
    with pytest.raises(PowerLoss):
        tear()
    flash.power_on()
    return flash.read(0, 128)


@pytest.mark.parametrize("operation", ["program", "erase"])
def test_tears_are_deterministic_per_seed_and_vary_between_seeds(operation: str) -> None:
    assert tear_image(7, operation) == tear_image(7, operation)
    assert len({tear_image(seed, operation) for seed in range(12)}) > 3


@settings(max_examples=200, deadline=None)
@given(
    old=st.binary(min_size=1, max_size=40),
    clear=st.binary(min_size=40, max_size=40),
    seed=st.integers(0, 2**32),
    erase=st.booleans(),
)
def test_a_torn_operation_lies_between_before_and_after(
    old: bytes, clear: bytes, seed: int, erase: bool
) -> None:
    """NOR physics: a tear only moves bits the operation was moving."""
    flash = Flash.in_memory(sector_size=64, sector_count=1, seed=seed)
    flash.program(0, old)
    before = flash.read(0, 64)
    target = bytes(b & c for b, c in zip(before, clear + bytes(24), strict=True))
    flash.cut_power_at(1)
    tear: Callable[[], None] = (
        (lambda: flash.erase(0)) if erase else (lambda: flash.program(0, target))
    )
    with pytest.raises(PowerLoss):
        tear()
    flash.power_on()
    after = int.from_bytes(flash.read(0, 64), "big")
    was = int.from_bytes(before, "big")
    if erase:
        assert after & was == was, "a torn erase only sets bits"
    else:
        wanted = int.from_bytes(target, "big")
        assert after & ~was == 0, "a torn program never sets a bit"
        assert after & wanted == wanted, "a torn program only clears bits it was asked to"


def test_tamper_bypasses_nor_rules_and_is_not_counted() -> None:
    flash = small_flash()
    flash.program(0, b"\x00")
    flash.tamper(0, b"\xa5")
    assert flash.read(0, 1) == b"\xa5"
    assert flash.operations == 1


def test_file_flash_is_created_blank_and_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "flash.img"
    with Flash.open_file(path, sector_size=64, sector_count=4) as flash:
        assert flash.read(0, 256) == b"\xff" * 256
        flash.program(10, b"pumpguard")
        flash.erase(3)
    assert path.stat().st_size == 256
    with Flash.open_file(path, sector_size=64, sector_count=4) as flash:
        assert flash.read(10, 9) == b"pumpguard"
    with Flash.open_file(path, sector_size=64, sector_count=4, read_only=True) as flash:
        assert flash.read(10, 9) == b"pumpguard"
        with pytest.raises(FlashError, match="read-only"):
            flash.program(0, b"\x00")


def test_file_flash_keeps_a_torn_operation(tmp_path: Path) -> None:
    path = tmp_path / "flash.img"
    with Flash.open_file(path, sector_size=64, sector_count=4) as flash:
        flash.cut_power_at(1, keep=0.5)
        with pytest.raises(PowerLoss):
            flash.program(0, bytes(8))
    with Flash.open_file(path, sector_size=64, sector_count=4) as flash:
        assert flash.read(0, 8) == bytes(4) + b"\xff" * 4


def test_file_flash_refuses_a_wrong_size_or_missing_image(tmp_path: Path) -> None:
    path = tmp_path / "flash.img"
    path.write_bytes(b"\xff" * 100)
    with pytest.raises(FlashError, match=r"100 bytes, expected 256"):
        Flash.open_file(path, sector_size=64, sector_count=4)
    assert path.read_bytes() == b"\xff" * 100, "a refused image is left alone"
    with pytest.raises(FlashError, match="does not exist"):
        Flash.open_file(tmp_path / "missing.img", sector_size=64, sector_count=4, read_only=True)
    assert not (tmp_path / "missing.img").exists()


@pytest.mark.skipif(sys.platform == "win32", reason="flock")
def test_file_flash_cannot_be_driven_by_two_pumps(tmp_path: Path) -> None:
    path = tmp_path / "flash.img"
    with Flash.open_file(path, sector_size=64, sector_count=4):
        with pytest.raises(FlashError, match="in use"):
            Flash.open_file(path, sector_size=64, sector_count=4)
        # An offline reader takes no lock.
        Flash.open_file(path, sector_size=64, sector_count=4, read_only=True).close()


# --- Snapshot store ------------------------------------------------------------------

#: Payloads of varied sizes: with 128-byte sectors they fill sectors at
#: different points, so commits both append and move to a fresh sector.
PAYLOADS = [bytes([n]) * (5 + 9 * n % 97) for n in range(1, 23)]
STORE_SECTORS = 3


def store_flash(seed: int = 0) -> Flash:
    return Flash.in_memory(sector_size=128, sector_count=STORE_SECTORS + 1, seed=seed)


def test_blank_store_is_factory_new_and_commits_round_trip() -> None:
    flash = store_flash()
    store = SnapshotStore(flash, 1, STORE_SECTORS)
    assert store.load() is None
    for n, payload in enumerate(PAYLOADS, start=1):
        assert store.commit(payload) == n
        assert store.load() == payload
        assert SnapshotStore(flash, 1, STORE_SECTORS).load() == payload
    assert is_erased(flash.read(0, 128)), "the store stays inside its region"


def test_store_rejects_bad_geometry_and_oversized_payloads() -> None:
    flash = store_flash()
    with pytest.raises(ValueError, match="at least 2"):
        SnapshotStore(flash, 0, 1)
    with pytest.raises(ValueError, match="outside"):
        SnapshotStore(flash, 2, 3)
    store = SnapshotStore(flash, 0, 2)
    assert store.max_payload == 128 - RECORD_OVERHEAD
    store.commit(bytes(store.max_payload))
    with pytest.raises(ValueError, match="exceeds"):
        store.commit(bytes(store.max_payload + 1))
    assert store.load() == bytes(store.max_payload)


def test_record_format_is_as_documented() -> None:
    """Golden bytes from the module docstring, built here independently."""
    flash = store_flash()
    SnapshotStore(flash, 0, 2).commit(b"state")
    import zlib

    body = (1).to_bytes(4, "big") + (5).to_bytes(2, "big") + b"state"
    expected = b"PG" + body + zlib.crc32(body).to_bytes(4, "big")
    assert flash.read(0, len(expected) + 1) == expected + b"\xff"


def run_commits(flash: Flash, payloads: list[bytes]) -> tuple[bytes | None, bytes | None]:
    """Commit in order until the power fails: (last acknowledged, in flight)."""
    store = SnapshotStore(flash, 0, STORE_SECTORS)
    assert store.load() is None
    acknowledged: bytes | None = None
    for payload in payloads:
        try:
            store.commit(payload)
        except PowerLoss:
            return acknowledged, payload
        acknowledged = payload
    return acknowledged, None


def clean_operations(run: Callable[[Flash], object], make_flash: Callable[[], Flash]) -> int:
    """Operations a scenario performs without a power cut: the k to enumerate."""
    flash = make_flash()
    run(flash)
    return flash.operations


@pytest.mark.parametrize(("seed", "keep"), TEARS, ids=str)
def test_store_power_cut_at_every_operation(seed: int, keep: float | None) -> None:
    total = clean_operations(lambda f: run_commits(f, PAYLOADS), store_flash)
    assert total > 2 * len(PAYLOADS), "the scenario moves between sectors"
    outcomes = set()
    for k in range(1, total + 1):
        flash = store_flash(seed)
        flash.cut_power_at(k, keep=keep)
        old, new = run_commits(flash, PAYLOADS)
        assert new is not None, f"cut {k} never happened"
        flash.power_on()
        store = SnapshotStore(flash, 0, STORE_SECTORS)
        loaded = store.load()  # Never StorageCorrupt after a power cut.
        assert loaded in (old, new), f"cut at operation {k}: neither old nor new"
        outcomes.add("new" if loaded == new and new != old else "old")
        # A torn record must not block later commits, nor resurface.
        for payload in PAYLOADS[:4]:
            store.commit(payload)
            assert SnapshotStore(flash, 0, STORE_SECTORS).load() == payload
    if keep is None:
        assert outcomes == {"old", "new"}, "the tears cover both outcomes"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**16),
    cuts=st.lists(st.integers(1, 12), min_size=1, max_size=5),
)
def test_store_survives_repeated_power_cuts(seed: int, cuts: list[int]) -> None:
    flash = store_flash(seed)
    acknowledged: bytes | None = None
    payloads = iter(PAYLOADS * 3)
    for k in cuts:
        store = SnapshotStore(flash, 0, STORE_SECTORS)
        assert store.load() == acknowledged
        flash.cut_power_at(k)
        in_flight: bytes | None = None
        try:
            for payload in payloads:
                in_flight = payload
                store.commit(payload)
                acknowledged, in_flight = payload, None
        except PowerLoss:
            flash.power_on()
        loaded = SnapshotStore(flash, 0, STORE_SECTORS).load()
        assert loaded in (acknowledged, in_flight)
        acknowledged = loaded


@pytest.mark.parametrize(("seed", "keep"), TEARS, ids=str)
def test_torn_first_commit_is_factory_new(seed: int, keep: float | None) -> None:
    for k in (1, 2, 3):  # Erase, body, magic.
        flash = store_flash(seed)
        flash.cut_power_at(k, keep=keep)
        with pytest.raises(PowerLoss):
            SnapshotStore(flash, 0, STORE_SECTORS).commit(b"first")
        flash.power_on()
        store = SnapshotStore(flash, 0, STORE_SECTORS)
        assert store.load() in (None, b"first")
        store.commit(b"second")
        assert SnapshotStore(flash, 0, STORE_SECTORS).load() == b"second"


def test_bit_rot_never_yields_a_wrong_payload_or_factory_defaults() -> None:
    """Every byte of the region, three kinds of damage each."""
    committed = PAYLOADS[:9]
    reference = store_flash()
    run_commits(reference, committed)
    image = reference.read(0, 128 * STORE_SECTORS)
    verdicts = {"newest": 0, "older": 0, "corrupt": 0}
    for position in range(len(image)):
        for mask in (0x01, 0x80, 0xFF):
            flash = store_flash()
            flash.tamper(0, image)
            flash.tamper(position, bytes([image[position] ^ mask]))
            try:
                loaded = SnapshotStore(flash, 0, STORE_SECTORS).load()
            except StorageCorrupt:
                verdicts["corrupt"] += 1
                continue
            assert loaded in committed, f"byte {position} ^ {mask:#x}: a payload never committed"
            verdicts["newest" if loaded == committed[-1] else "older"] += 1
    assert verdicts["newest"], verdicts
    assert verdicts["corrupt"], verdicts


def test_damage_to_a_newer_record_is_reported_not_rolled_back() -> None:
    flash = store_flash()
    store = SnapshotStore(flash, 0, STORE_SECTORS)
    store.commit(b"older state")
    store.commit(b"newer state")
    newer = 12 + len(b"older state")
    flash.tamper(newer + 9, b"X")  # Inside the newer payload.
    with pytest.raises(StorageCorrupt, match="refusing to roll back"):
        store.load()
    with pytest.raises(StorageCorrupt):
        store.commit(b"anything")


def test_damage_to_an_older_record_is_harmless() -> None:
    flash = store_flash()
    store = SnapshotStore(flash, 0, STORE_SECTORS)
    store.commit(b"older state")
    store.commit(b"newer state")
    flash.tamper(9, b"X")  # Inside the older payload.
    assert store.load() == b"newer state"
    store.commit(b"newest")
    assert SnapshotStore(flash, 0, STORE_SECTORS).load() == b"newest"


def test_a_lost_only_commit_is_corrupt_not_factory_new() -> None:
    flash = store_flash()
    SnapshotStore(flash, 0, STORE_SECTORS).commit(b"paired, strict limits")
    flash.tamper(10, b"X")
    with pytest.raises(StorageCorrupt, match="no valid snapshot"):
        SnapshotStore(flash, 0, STORE_SECTORS).load()


def test_garbage_in_a_blank_region_is_corrupt() -> None:
    flash = store_flash()
    flash.tamper(200, b"\x00")
    with pytest.raises(StorageCorrupt):
        SnapshotStore(flash, 0, STORE_SECTORS).load()


def test_format_resets_a_corrupt_store() -> None:
    flash = store_flash()
    store = SnapshotStore(flash, 0, STORE_SECTORS)
    store.commit(b"state")
    flash.tamper(10, b"X")
    with pytest.raises(StorageCorrupt):
        store.load()
    store.format()
    assert store.load() is None
    store.commit(b"fresh")
    assert SnapshotStore(flash, 0, STORE_SECTORS).load() == b"fresh"


@pytest.mark.parametrize("keep", [None, 0.0, 0.5, 1.0], ids=str)
def test_a_cut_format_never_brings_an_old_state_back(keep: float | None) -> None:
    def prepare(flash: Flash) -> SnapshotStore:
        run_commits(flash, PAYLOADS[:12])
        return SnapshotStore(flash, 0, STORE_SECTORS)

    reference = store_flash()
    before = prepare(reference)
    start = reference.operations
    before.format()
    total = reference.operations - start
    for k in range(1, total + 1):
        flash = store_flash(k)
        store = prepare(flash)
        flash.cut_power_at(k, keep=keep)
        with pytest.raises(PowerLoss):
            store.format()
        flash.power_on()
        try:
            loaded = SnapshotStore(flash, 0, STORE_SECTORS).load()
        except StorageCorrupt:
            continue  # The user resets again; nothing permissive happened.
        assert loaded in (PAYLOADS[11], None), f"cut {k} of the reset revived an old state"


def test_an_erase_cut_anywhere_cannot_revive_a_reset_record() -> None:
    """Real erases do not tear on byte boundaries: set bits anywhere in a zeroed record.

    After the zeroing pass of :meth:`SnapshotStore.format`, an erase cut after
    ``n`` bytes with some bits of byte ``n`` already set must not make any old
    record valid again.  (Zeroing only the magic would fail this: bits set
    back in the magic alone revive the intact body behind it.)
    """
    clean = store_flash()
    run_commits(clean, PAYLOADS[:12])
    before_reset = clean.operations
    SnapshotStore(clean, 0, STORE_SECTORS).format()
    # The reset is one zeroing program per record, then one erase per sector.
    first_erase = clean.operations - before_reset - STORE_SECTORS + 1
    zeroed = store_flash()
    run_commits(zeroed, PAYLOADS[:12])
    zeroed.cut_power_at(first_erase, keep=0.0)
    with pytest.raises(PowerLoss):
        SnapshotStore(zeroed, 0, STORE_SECTORS).format()
    zeroed.power_on()
    image = zeroed.read(0, 128 * STORE_SECTORS)
    assert image.count(0) > 12 * RECORD_OVERHEAD, "the records were zeroed"
    for sector in range(STORE_SECTORS):
        base = sector * 128
        for done in range(128):
            for mask in (0x47, 0x57, 0xFF, 0x0F):
                flash = store_flash()
                flash.tamper(0, image)
                flash.tamper(base, b"\xff" * done)
                flash.tamper(base + done, bytes([image[base + done] | mask]))
                try:
                    loaded = SnapshotStore(flash, 0, STORE_SECTORS).load()
                except StorageCorrupt:
                    continue
                assert loaded is None, f"sector {sector} erased to {done} | {mask:#x} revived"


class SnapshotModel(RuleBasedStateMachine):
    """Random commits, power cuts and reboots against a two-value model."""

    def __init__(self) -> None:
        super().__init__()
        self.flash = Flash.in_memory(sector_size=96, sector_count=3, seed=5)
        self.store = SnapshotStore(self.flash, 0, 3)
        self.store.load()
        #: The payload the model knows is committed, and one that may be.
        self.committed: bytes | None = None
        self.maybe: bytes | None = None

    @precondition(lambda self: self.flash.powered)
    @rule(payload=st.binary(max_size=84))
    def commit(self, payload: bytes) -> None:
        try:
            self.store.commit(payload)
        except PowerLoss:
            self.maybe = payload
        else:
            self.committed, self.maybe = payload, None

    @precondition(lambda self: self.flash.powered)
    @rule(k=st.integers(1, 4), keep=st.sampled_from([None, None, 0.0, 1.0]))
    def arm_power_cut(self, k: int, keep: float | None) -> None:
        self.flash.cut_power_at(k, keep=keep)

    @rule()
    def reboot(self) -> None:
        self.flash.power_on()
        self.store = SnapshotStore(self.flash, 0, 3)
        loaded = self.store.load()
        assert loaded in (self.committed, self.maybe)
        self.committed, self.maybe = loaded, None

    @precondition(lambda self: self.flash.powered)
    @invariant()
    def a_fresh_boot_sees_the_committed_payload(self) -> None:
        if self.maybe is None:
            assert SnapshotStore(self.flash, 0, 3).load() == self.committed


TestSnapshotModel = SnapshotModel.TestCase
TestSnapshotModel.settings = settings(max_examples=80, stateful_step_count=40, deadline=None)


def test_store_on_a_file_flash_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "state.img"
    with Flash.open_file(path, sector_size=128, sector_count=4) as flash:
        store = SnapshotStore(flash, 0, STORE_SECTORS)
        assert store.load() is None
        for payload in PAYLOADS:
            store.commit(payload)
    with Flash.open_file(path, sector_size=128, sector_count=4) as flash:
        store = SnapshotStore(flash, 0, STORE_SECTORS)
        assert store.load() == PAYLOADS[-1]
        store.commit(b"after reopening")
    with Flash.open_file(path, sector_size=128, sector_count=4, read_only=True) as flash:
        assert SnapshotStore(flash, 0, STORE_SECTORS).load() == b"after reopening"


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_a_killed_process_loses_no_acknowledged_commit(tmp_path: Path) -> None:
    """SIGKILL in the middle of a stream of commits to a file flash."""
    path = tmp_path / "state.img"
    script = textwrap.dedent(
        f"""
        import sys
        from pumpguard.firmware_sim.flash import Flash
        from pumpguard.firmware_sim.store import SnapshotStore
        flash = Flash.open_file({str(path)!r}, sector_size=128, sector_count=4)
        store = SnapshotStore(flash, 0, 3)
        store.load()
        n = 0
        while True:
            n += 1
            store.commit(n.to_bytes(4, "big") * (1 + n % 20))
            print(n, flush=True)
        """
    )
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    child = subprocess.Popen(  # noqa: S603 -- our own script, run by this interpreter.
        [sys.executable, "-c", script], stdout=subprocess.PIPE, env=env, text=True
    )
    assert child.stdout is not None
    acknowledged = 0
    for line in child.stdout:
        acknowledged = int(line)
        if acknowledged >= 40:
            break
    child.kill()
    child.wait()
    with Flash.open_file(path, sector_size=128, sector_count=4) as flash:
        loaded = SnapshotStore(flash, 0, 3).load()
    assert loaded is not None
    seq = int.from_bytes(loaded[:4], "big")
    assert seq >= acknowledged, "an acknowledged commit was lost"
    assert loaded == seq.to_bytes(4, "big") * (1 + seq % 20)


def test_erased_constant_is_what_flash_reads_after_erase() -> None:
    flash = small_flash()
    flash.program(0, bytes(4))
    flash.erase(0)
    assert flash.read(0, 1) == bytes([ERASED])
