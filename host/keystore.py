"""The remote's key directory (``pumpctl --keys DIR``): its static key and its pairing.

Layout (SPEC §9; everything the remote persists about a pairing):

* ``remote.key`` -- the remote's X25519 static private key, 32 raw bytes,
  mode 0600.  Made from injected randomness the first time it is needed.
* ``pump.json`` -- written after pairing: the pump's static public key and
  pump id, and the pump's audit-log public key once learned.  Only public
  values: the pairing code is never stored (S12).
* The directory itself is created mode 0700.

Why it is this careful:

* Whoever reads ``remote.key`` can bolus.  Like ssh with an identity file,
  the key is refused when group or others may read it, with the command
  that fixes it, rather than used silently.
* Power can fail mid-write.  Every file is replaced atomically (temporary
  file in the same directory, ``fsync``, ``rename``, ``fsync`` of the
  directory), so a reader sees the old file or the new one, never half.
* Bad files are reported, never repaired: a corrupt key or pairing raises
  :class:`KeyStoreError` and leaves the disk exactly as it was, so nothing
  is lost that a user could still recover.
* Unpairing erases the key (S11): it is overwritten and deleted, and a new
  one is made at the next pairing.  Overwriting is best effort -- a
  journaling file system or flash translation layer may keep old blocks --
  which is why the directory is private in the first place.

No message or ``repr`` here ever contains key bytes.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from pumpguard.protocol import RandomBytes, wire, x25519_private
from pumpguard.protocol import pump_id as derive_pump_id

__all__ = [
    "KEY_FILE",
    "PAIRING_FILE",
    "KeyStore",
    "KeyStoreError",
    "Pairing",
    "atomic_write",
    "fsync_directory",
]

KEY_FILE: Final = "remote.key"
PAIRING_FILE: Final = "pump.json"
#: Version of the ``pump.json`` layout; a file with any other is refused.
PAIRING_FORMAT: Final = 1

_DIR_MODE: Final = 0o700
_FILE_MODE: Final = 0o600
#: Largest ``pump.json`` read; a real one is about 250 bytes.
_MAX_PAIRING_FILE: Final = 4096
_CHECK_PERMISSIONS: Final = os.name == "posix"


class KeyStoreError(Exception):
    """The key directory or a file in it is unusable.  One line, never key bytes."""


@dataclass(frozen=True, repr=False)
class Pairing:
    """What the remote keeps about the pump it is paired with (all public)."""

    #: The pump's X25519 static public key.
    pump_static: bytes
    #: SHA-256(pump_static)[:8]: the id the pump shows and policies name.
    pump_id: bytes
    #: The pump's Ed25519 audit-log key, once learned; ``None`` before.
    audit_public: bytes | None = None

    def __repr__(self) -> str:
        audit = "known" if self.audit_public is not None else "unknown"
        return f"Pairing(pump_id={self.pump_id.hex()}, audit_key={audit})"


# --- Durable file operations ------------------------------------------------


def fsync_directory(directory: Path) -> None:
    """Make a rename or unlink in ``directory`` durable.  No-op where unsupported."""
    if os.name != "posix":
        return  # Windows cannot open a directory for fsync; renames are journaled.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, *, mode: int = _FILE_MODE) -> None:
    """Replace ``path`` with ``data`` so that a power cut leaves old or new, never half.

    The temporary file is created in the same directory (``rename`` is
    atomic only within one file system) with ``mode`` from the start, so the
    bytes are never readable by others, not even briefly.

    Raises:
        OSError: the write failed; ``path`` is unchanged and no temporary is left.
    """
    directory = path.parent
    fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    temp = Path(temp_name)
    try:
        try:
            if hasattr(os, "fchmod"):
                os.fchmod(fd, mode)
            else:
                os.chmod(temp, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
    fsync_directory(directory)


def _scrub(path: Path) -> None:
    """Overwrite a file with zeros, make that durable, and delete it."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return
    with path.open("r+b") as handle:
        handle.write(bytes(size))
        handle.flush()
        os.fsync(handle.fileno())
    path.unlink()


def _describe(exc: OSError) -> str:
    if isinstance(exc, PermissionError):
        return "permission denied"
    return exc.strerror or type(exc).__name__


# --- The key store ----------------------------------------------------------


class KeyStore:
    """The remote's ``--keys`` directory.  Open with :meth:`open`.

    Files are read on every call, not cached, so two commands run one after
    the other always agree with the disk.
    """

    def __init__(self, directory: Path, random_bytes: RandomBytes) -> None:
        self._dir = directory
        self._random_bytes = random_bytes

    @classmethod
    def open(
        cls, path: str | os.PathLike[str], *, random_bytes: RandomBytes = os.urandom
    ) -> KeyStore:
        """Open the key directory, creating it (mode 0700) if missing.

        ``random_bytes`` is used only to make a new remote key; tests inject
        a seeded source.

        Raises:
            KeyStoreError: ``path`` is a file, or cannot be created or entered.
        """
        directory = Path(path)
        try:
            if not directory.exists():
                directory.mkdir(mode=_DIR_MODE, parents=True)
                # mkdir's mode is filtered by the umask; make it exact.
                directory.chmod(_DIR_MODE)
            elif not directory.is_dir():
                raise KeyStoreError(f"keys path {directory} is a file, not a directory")
            if not os.access(directory, os.R_OK | os.W_OK | os.X_OK):
                raise KeyStoreError(f"keys directory {directory}: permission denied")
        except NotADirectoryError:
            raise KeyStoreError(f"keys path {directory} is inside a file") from None
        except OSError as exc:
            raise KeyStoreError(
                f"cannot create keys directory {directory}: {_describe(exc)}"
            ) from None
        return cls(directory, random_bytes)

    @property
    def path(self) -> Path:
        return self._dir

    @property
    def key_path(self) -> Path:
        return self._dir / KEY_FILE

    @property
    def pairing_path(self) -> Path:
        return self._dir / PAIRING_FILE

    def __repr__(self) -> str:
        return f"KeyStore({str(self._dir)!r})"

    # -- remote static key --

    def _check_private(self, path: Path, mode: int) -> None:
        if _CHECK_PERMISSIONS and mode & 0o077:
            raise KeyStoreError(
                f"{path} is accessible by group or others (mode {stat.S_IMODE(mode):04o}); "
                f"a private key must be private: run chmod 600 {path}"
            )

    def _read_key(self) -> X25519PrivateKey | None:
        path = self.key_path
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise KeyStoreError(f"cannot read {path}: {_describe(exc)}") from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise KeyStoreError(f"{path} is not a regular file")
            self._check_private(path, info.st_mode)
            # One byte more than a key, to tell "too long" from "exact".
            seed = os.read(fd, wire.X25519_KEY_LEN + 1)
        except OSError as exc:
            raise KeyStoreError(f"cannot read {path}: {_describe(exc)}") from None
        finally:
            os.close(fd)
        if len(seed) != wire.X25519_KEY_LEN:
            raise KeyStoreError(
                f"{path} is corrupt (not a {wire.X25519_KEY_LEN}-byte key); "
                "restore it from a backup, or delete the keys directory and pair again"
            )
        return x25519_private(seed)

    def remote_static(self, random_bytes: RandomBytes | None = None) -> X25519PrivateKey:
        """The remote's static key, made (and stored, mode 0600) if there is none yet.

        A new key's 32 bytes come from ``random_bytes`` if given, else from
        the source passed to :meth:`open`.

        Raises:
            KeyStoreError: the key file is corrupt, unreadable or not private,
                or there is a pairing but its key is gone.
        """
        key = self._read_key()
        if key is not None:
            return key
        if self.pairing_path.exists():
            # A pairing without its key is half an unpair (power cut during
            # erase_pairing) or tampering; a fresh key would not match it.
            raise KeyStoreError(
                f"{self.pairing_path} exists but {self.key_path} is missing; "
                "run pumpctl unpair, then pair again"
            )
        seed = (random_bytes or self._random_bytes)(wire.X25519_KEY_LEN)
        key = x25519_private(seed)
        try:
            atomic_write(self.key_path, seed)
        except OSError as exc:
            raise KeyStoreError(f"cannot write {self.key_path}: {_describe(exc)}") from None
        return key

    # -- pairing --

    def pairing(self) -> Pairing | None:
        """The stored pairing, or ``None`` if not paired.

        Raises:
            KeyStoreError: ``pump.json`` is unreadable, corrupt or writable by others.
        """
        path = self.pairing_path
        try:
            with path.open("rb") as handle:
                info = os.fstat(handle.fileno())
                raw = handle.read(_MAX_PAIRING_FILE + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise KeyStoreError(f"cannot read {path}: {_describe(exc)}") from None
        if _CHECK_PERMISSIONS and info.st_mode & 0o022:
            # Whoever can rewrite the pump's key can put themselves in the middle.
            raise KeyStoreError(f"{path} is writable by group or others; run chmod 600 {path}")
        return _parse_pairing(path, raw)

    def save_pairing(
        self,
        pump_static: bytes,
        pump_id: bytes | None = None,
        *,
        audit_public: bytes | None = None,
    ) -> Pairing:
        """Store a new pairing (after the pump confirmed it), replacing any old one.

        ``pump_id`` is derived from ``pump_static``; if given, it must match.

        Raises:
            ValueError: a key has the wrong length or ``pump_id`` does not
                match (a caller bug).
            KeyStoreError: the file could not be written; the old one is intact.
        """
        if len(pump_static) != wire.X25519_KEY_LEN:
            raise ValueError("pump static key must be 32 bytes")
        if audit_public is not None and len(audit_public) != wire.ED25519_PUBLIC_LEN:
            raise ValueError("audit public key must be 32 bytes")
        derived = derive_pump_id(pump_static)
        if pump_id is not None and pump_id != derived:
            raise ValueError("pump id does not belong to the pump static key")
        pairing = Pairing(pump_static=pump_static, pump_id=derived, audit_public=audit_public)
        self._write_pairing(pairing)
        return pairing

    def save_audit_key(self, audit_public: bytes) -> Pairing:
        """Record the pump's audit-log public key in the current pairing.

        Raises:
            ValueError: the key has the wrong length (a caller bug).
            KeyStoreError: not paired, or the file could not be written.
        """
        if len(audit_public) != wire.ED25519_PUBLIC_LEN:
            raise ValueError("audit public key must be 32 bytes")
        current = self.pairing()
        if current is None:
            raise KeyStoreError(f"not paired: {self.pairing_path} does not exist")
        updated = Pairing(
            pump_static=current.pump_static, pump_id=current.pump_id, audit_public=audit_public
        )
        self._write_pairing(updated)
        return updated

    def _write_pairing(self, pairing: Pairing) -> None:
        document = {
            "format": PAIRING_FORMAT,
            "pump_static": pairing.pump_static.hex(),
            "pump_id": pairing.pump_id.hex(),
            "audit_public": pairing.audit_public.hex() if pairing.audit_public else None,
        }
        data = (json.dumps(document, indent=2) + "\n").encode()
        try:
            atomic_write(self.pairing_path, data)
        except OSError as exc:
            raise KeyStoreError(f"cannot write {self.pairing_path}: {_describe(exc)}") from None

    def erase_pairing(self) -> None:
        """Forget the pump and erase the remote key (S11).  Idempotent.

        The key goes first: a power cut in between leaves ``pump.json``
        without a key, which :meth:`remote_static` refuses and a repeated
        unpair finishes -- never a key that outlives its unpairing.

        Raises:
            KeyStoreError: a file could not be erased.
        """
        try:
            # Leftover temporaries from a power cut during a write may hold a key.
            for leftover in self._dir.glob(f".{KEY_FILE}.*.tmp"):
                _scrub(leftover)
            _scrub(self.key_path)
            fsync_directory(self._dir)
            self.pairing_path.unlink(missing_ok=True)
            for leftover in self._dir.glob(f".{PAIRING_FILE}.*.tmp"):
                leftover.unlink(missing_ok=True)
            fsync_directory(self._dir)
        except OSError as exc:
            raise KeyStoreError(f"cannot erase pairing in {self._dir}: {_describe(exc)}") from None


def _hex_field(path: Path, document: dict[str, object], name: str, length: int) -> bytes:
    value = document.get(name)
    if not isinstance(value, str):
        raise KeyStoreError(f"{path} is corrupt: {name} is missing or not a string")
    try:
        decoded = bytes.fromhex(value)
    except ValueError:
        raise KeyStoreError(f"{path} is corrupt: {name} is not hexadecimal") from None
    if len(decoded) != length:
        raise KeyStoreError(f"{path} is corrupt: {name} is not {length} bytes")
    return decoded


def _parse_pairing(path: Path, raw: bytes) -> Pairing:
    fix = "restore it from a backup, or delete the keys directory and pair again"
    if len(raw) > _MAX_PAIRING_FILE:
        raise KeyStoreError(f"{path} is corrupt (too large); {fix}")
    try:
        document = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise KeyStoreError(f"{path} is corrupt (not valid JSON); {fix}") from None
    if not isinstance(document, dict):
        raise KeyStoreError(f"{path} is corrupt (not a JSON object); {fix}")
    if document.get("format") != PAIRING_FORMAT:
        raise KeyStoreError(f"{path} has an unknown format; {fix}")
    pump_static = _hex_field(path, document, "pump_static", wire.X25519_KEY_LEN)
    stored_id = _hex_field(path, document, "pump_id", wire.PUMP_ID_LEN)
    audit = (
        None
        if document.get("audit_public") is None
        else _hex_field(path, document, "audit_public", wire.ED25519_PUBLIC_LEN)
    )
    if derive_pump_id(pump_static) != stored_id:
        raise KeyStoreError(f"{path} is corrupt (pump id does not match pump key); {fix}")
    return Pairing(pump_static=pump_static, pump_id=stored_id, audit_public=audit)
