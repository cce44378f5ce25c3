"""The remote's key directory (host/keystore.py).

What these tests stop:

* a remote key others can read (0600 file in a 0700 directory; a
  group-readable key is refused with the fix, as ssh refuses one);
* bad files "repaired" by replacing them, losing a pairing the user could
  still recover: every corrupt file raises and the directory is unchanged;
* a key that outlives unpairing (S11), including a half-finished unpair;
* key bytes in an error message or a repr (S12).
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from helpers import seeded_random

from pumpguard.host.keystore import (
    KEY_FILE,
    PAIRING_FILE,
    KeyStore,
    KeyStoreError,
    atomic_write,
)
from pumpguard.protocol import pump_id, x25519_private, x25519_public_bytes

posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
not_root = pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0, reason="root bypasses permissions"
)

PUMP_STATIC = x25519_public_bytes(x25519_private(bytes(range(1, 33))))
AUDIT_KEY = bytes(range(100, 132))


def snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    """Every file's bytes and mode, to prove an operation changed nothing."""
    return {
        entry.name: (entry.read_bytes(), stat.S_IMODE(entry.stat().st_mode))
        for entry in sorted(directory.iterdir())
    }


def make_store(tmp_path: Path) -> KeyStore:
    return KeyStore.open(tmp_path / "keys", random_bytes=seeded_random(7))


def paired_store(tmp_path: Path) -> KeyStore:
    store = make_store(tmp_path)
    store.remote_static()
    store.save_pairing(pump_static=PUMP_STATIC)
    return store


def assert_no_key_bytes(text: str, key: bytes) -> None:
    assert key.hex() not in text.lower()
    assert repr(key) not in text


# --- creation and permissions -----------------------------------------------


@posix_only
def test_open_creates_a_private_directory(tmp_path: Path) -> None:
    old_umask = os.umask(0o022)
    try:
        store = KeyStore.open(tmp_path / "a" / "keys")
    finally:
        os.umask(old_umask)
    assert store.path.is_dir()
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o700


@posix_only
def test_remote_key_is_made_once_with_injected_randomness_and_mode_0600(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    key = store.remote_static()
    expected_seed = seeded_random(7)(32)
    assert store.key_path.read_bytes() == expected_seed
    assert stat.S_IMODE(store.key_path.stat().st_mode) == 0o600
    reopened = KeyStore.open(store.path, random_bytes=seeded_random(99))
    assert x25519_public_bytes(reopened.remote_static()) == x25519_public_bytes(key)
    assert sorted(os.listdir(store.path)) == [KEY_FILE]  # no temporaries left


def test_keys_path_that_is_a_file_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "keys"
    target.write_bytes(b"not a directory")
    with pytest.raises(KeyStoreError, match="is a file, not a directory"):
        KeyStore.open(target)
    with pytest.raises(KeyStoreError, match="inside a file"):
        KeyStore.open(target / "sub")
    assert target.read_bytes() == b"not a directory"


@posix_only
@not_root
def test_unusable_directory_is_permission_denied(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    store.path.chmod(0o000)
    try:
        with pytest.raises(KeyStoreError, match="permission denied"):
            KeyStore.open(store.path)
        with pytest.raises(KeyStoreError, match="permission denied"):
            KeyStore.open(store.path / "inner")
    finally:
        store.path.chmod(0o700)


@posix_only
@not_root
def test_unreadable_key_is_permission_denied(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    store.remote_static()
    store.key_path.chmod(0o000)
    with pytest.raises(KeyStoreError, match="permission denied"):
        store.remote_static()


@posix_only
@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
def test_key_readable_by_others_is_refused_with_the_fix(tmp_path: Path, mode: int) -> None:
    store = make_store(tmp_path)
    seed = seeded_random(7)(32)
    store.remote_static()
    store.key_path.chmod(mode)
    before = snapshot(store.path)
    with pytest.raises(KeyStoreError) as caught:
        store.remote_static()
    message = str(caught.value)
    assert f"chmod 600 {store.key_path}" in message
    assert f"{mode:04o}" in message
    assert_no_key_bytes(message, seed)
    assert snapshot(store.path) == before


@posix_only
def test_pairing_writable_by_others_is_refused(tmp_path: Path) -> None:
    store = paired_store(tmp_path)
    store.pairing_path.chmod(0o622)
    with pytest.raises(KeyStoreError, match="writable by group or others"):
        store.pairing()


# --- corrupt files ----------------------------------------------------------


@pytest.mark.parametrize("length", [0, 31, 33, 64])
def test_corrupt_remote_key_is_reported_and_left_alone(tmp_path: Path, length: int) -> None:
    store = make_store(tmp_path)
    atomic_write(store.key_path, b"\x5a" * length)
    before = snapshot(store.path)
    with pytest.raises(KeyStoreError, match=r"remote\.key is corrupt") as caught:
        store.remote_static()
    assert "5a5a" not in str(caught.value)
    assert snapshot(store.path) == before


def test_remote_key_that_is_a_directory_is_refused(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    store.key_path.mkdir()
    with pytest.raises(KeyStoreError):
        store.remote_static()
    assert store.key_path.is_dir()


def good_document() -> dict[str, object]:
    return {
        "format": 1,
        "pump_static": PUMP_STATIC.hex(),
        "pump_id": pump_id(PUMP_STATIC).hex(),
        "audit_public": None,
    }


def with_field(name: str, value: object) -> bytes:
    document = good_document()
    document[name] = value
    return json.dumps(document).encode()


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "not valid JSON"),
        (b'{"format": 1, "pump_st', "not valid JSON"),
        (b"\xff\xfe\x00garbage", "not valid JSON"),
        (b"[1, 2, 3]", "not a JSON object"),
        (with_field("format", 2), "unknown format"),
        (with_field("pump_static", None), "pump_static is missing"),
        (with_field("pump_static", "zz" * 32), "pump_static is not hexadecimal"),
        (with_field("pump_static", "ab" * 31), "pump_static is not 32 bytes"),
        (with_field("pump_id", "00" * 8), "pump id does not match"),
        (with_field("audit_public", "ab" * 16), "audit_public is not 32 bytes"),
        (with_field("audit_public", 5), "audit_public is missing or not a string"),
        (b" " * 5000, "too large"),
    ],
)
def test_corrupt_pairing_is_reported_and_left_alone(
    tmp_path: Path, content: bytes, reason: str
) -> None:
    store = make_store(tmp_path)
    store.remote_static()
    atomic_write(store.pairing_path, content)
    before = snapshot(store.path)
    with pytest.raises(KeyStoreError) as caught:
        store.pairing()
    message = str(caught.value)
    assert reason in message
    assert message.startswith(str(store.pairing_path))
    assert "\n" not in message
    assert snapshot(store.path) == before


def test_pairing_without_its_key_is_refused_not_rekeyed(tmp_path: Path) -> None:
    store = paired_store(tmp_path)
    store.key_path.unlink()
    before = snapshot(store.path)
    with pytest.raises(KeyStoreError, match="pumpctl unpair"):
        store.remote_static()
    assert snapshot(store.path) == before


# --- pairing round trip -----------------------------------------------------


@posix_only
def test_pairing_round_trip_and_audit_key(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    assert store.pairing() is None
    saved = store.save_pairing(pump_static=PUMP_STATIC)
    assert saved.pump_id == pump_id(PUMP_STATIC)
    assert stat.S_IMODE(store.pairing_path.stat().st_mode) == 0o600
    loaded = KeyStore.open(store.path).pairing()
    assert loaded == saved
    assert loaded is not None
    assert loaded.audit_public is None
    store.save_audit_key(AUDIT_KEY)
    reloaded = store.pairing()
    assert reloaded is not None
    assert reloaded.audit_public == AUDIT_KEY
    assert reloaded.pump_static == PUMP_STATIC


def test_save_pairing_checks_a_given_pump_id(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    with pytest.raises(ValueError, match="does not belong"):
        store.save_pairing(PUMP_STATIC, bytes(8))
    assert not store.pairing_path.exists()
    saved = store.save_pairing(PUMP_STATIC, pump_id(PUMP_STATIC))
    assert store.pairing() == saved


def test_remote_key_randomness_can_be_passed_per_call(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    store.remote_static(seeded_random(3))
    assert store.key_path.read_bytes() == seeded_random(3)(32)


def test_audit_key_needs_a_pairing(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    with pytest.raises(KeyStoreError, match="not paired"):
        store.save_audit_key(AUDIT_KEY)


def test_wrong_length_keys_are_caller_bugs(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    with pytest.raises(ValueError, match="32 bytes"):
        store.save_pairing(pump_static=PUMP_STATIC[:31])
    with pytest.raises(ValueError, match="32 bytes"):
        store.save_pairing(pump_static=PUMP_STATIC, audit_public=b"short")
    assert not store.pairing_path.exists()


def test_reprs_show_no_key_bytes(tmp_path: Path) -> None:
    store = paired_store(tmp_path)
    pairing = store.save_audit_key(AUDIT_KEY)
    text = repr(pairing) + repr(store)
    assert_no_key_bytes(text, PUMP_STATIC)
    assert_no_key_bytes(text, AUDIT_KEY)
    assert_no_key_bytes(text, store.key_path.read_bytes())
    assert pump_id(PUMP_STATIC).hex() in repr(pairing)


# --- erasing ----------------------------------------------------------------


def test_erase_removes_key_and_pairing_and_next_key_is_new(tmp_path: Path) -> None:
    store = paired_store(tmp_path)
    old_public = x25519_public_bytes(store.remote_static())
    store.erase_pairing()
    assert not store.key_path.exists()
    assert not store.pairing_path.exists()
    assert store.pairing() is None
    store.erase_pairing()  # idempotent
    fresh = KeyStore.open(store.path, random_bytes=seeded_random(8))
    assert x25519_public_bytes(fresh.remote_static()) != old_public


def test_erase_overwrites_the_key_before_deleting_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = paired_store(tmp_path)
    contents_at_unlink: dict[str, bytes] = {}
    real_unlink = Path.unlink

    def spy_unlink(self: Path, missing_ok: bool = False) -> None:
        if self.exists():
            contents_at_unlink[self.name] = self.read_bytes()
        real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", spy_unlink)
    store.erase_pairing()
    assert contents_at_unlink[KEY_FILE] == bytes(32)


def test_erase_scrubs_leftover_temporaries(tmp_path: Path) -> None:
    store = paired_store(tmp_path)
    leftover_key = store.path / f".{KEY_FILE}.abc123.tmp"
    leftover_pairing = store.path / f".{PAIRING_FILE}.def456.tmp"
    leftover_key.write_bytes(os.urandom(32))
    leftover_pairing.write_bytes(b"{}")
    store.erase_pairing()
    assert os.listdir(store.path) == []


def test_erase_finishes_a_half_done_unpair(tmp_path: Path) -> None:
    # A power cut after the key was scrubbed but before pump.json went.
    store = paired_store(tmp_path)
    store.key_path.unlink()
    store.erase_pairing()
    assert store.pairing() is None
    store.remote_static()  # now a fresh key is allowed


# --- atomic_write -----------------------------------------------------------


@posix_only
def test_atomic_write_failure_leaves_target_and_no_temporary(tmp_path: Path) -> None:
    blocker = tmp_path / "target"
    blocker.mkdir()  # os.replace onto a directory fails
    with pytest.raises(IsADirectoryError):
        atomic_write(blocker, b"data")
    assert blocker.is_dir()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["target"]


@posix_only
def test_atomic_write_replaces_content_with_private_mode(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_bytes(b"old")
    target.chmod(0o644)
    atomic_write(target, b"new")
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
