"""The prescriber's side of limits policies (S6): keys and signed policy files.

The prescriber key signs limits; the remote only carries the signed file to
the pump.  Files:

* private key: PEM PKCS#8, unencrypted, mode 0600 (keep it off the remote);
* public key: PEM SubjectPublicKeyInfo (enrolled on the pump's front panel,
  ``pumpsim --prescriber-key``);
* signed policy: JSON ``{"policy": hex, "signature": hex}``, where ``policy``
  is the deterministic CBOR of SPEC §12.5.
"""

from __future__ import annotations

import json
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pumpguard.protocol import wire

from .keystore import KeyStoreError, atomic_write


def keygen(private_path: Path, public_path: Path) -> None:
    for path in (private_path, public_path):
        if path.exists():
            raise KeyStoreError(f"{path} exists; not overwriting a key")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    atomic_write(private_path, private_pem, mode=0o600)
    atomic_write(public_path, public_pem, mode=0o644)


def read_private(path: Path) -> Ed25519PrivateKey:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyStoreError(f"cannot read prescriber key {path}: {exc.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise KeyStoreError(f"{path} is not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyStoreError(f"{path} is not an Ed25519 private key")
    return key


def write_signed_policy(path: Path, policy: bytes, signature: bytes) -> None:
    document = {"policy": policy.hex(), "signature": signature.hex()}
    atomic_write(path, (json.dumps(document, sort_keys=True) + "\n").encode(), mode=0o644)


def read_signed_policy(path: Path) -> tuple[bytes, bytes]:
    try:
        document = json.loads(path.read_text())
        policy = bytes.fromhex(document["policy"])
        signature = bytes.fromhex(document["signature"])
    except OSError as exc:
        raise KeyStoreError(f"cannot read policy file {path}: {exc.strerror}") from None
    except (ValueError, KeyError, TypeError, AttributeError):
        raise KeyStoreError(f"{path} is not a signed policy file (pumpctl policy sign)") from None
    if not 0 < len(policy) <= wire.MAX_POLICY_LEN or len(signature) != wire.ED25519_SIGNATURE_LEN:
        raise KeyStoreError(f"{path}: policy or signature has the wrong size")
    return policy, signature
