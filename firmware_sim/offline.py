"""The state directory: opening it for the pump, and reading it with the pump off.

``--state DIR`` holds ``flash.img`` (the simulated flash, firmware_sim.flash)
and ``motor.witness`` (the motor's own pulse count, firmware_sim.motor).
``pumpsim status`` and ``pumpsim log`` read them read-only, without booting
the firmware, so looking never changes anything.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pumpguard.protocol import legacy, pulses_to_float_units, wire
from pumpguard.protocol.audit_entry import AuditEntry

from . import config
from .audit import AuditLog, AuditVerificationError, verify_entries
from .delivery_events import DeliverySnapshotInvalid
from .delivery_snapshot import snapshot_from_bytes
from .flash import Flash, FlashError, StorageError
from .motor import Motor, MotorError
from .state import StateInvalid, decode_state
from .store import SnapshotStore, StorageCorrupt

FLASH_FILE = "flash.img"
MOTOR_FILE = "motor.witness"
#: ``pumpsim --legacy`` keeps only its serial number (and the motor witness).
LEGACY_SERIAL_FILE = "legacy.serial"


class OfflineError(Exception):
    """The state directory cannot be used; one line for the operator."""


class LogInvalid(Exception):
    """The audit log does not verify."""


def _make_directory(directory: Path) -> None:
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise OfflineError(f"cannot use state directory {directory}: {exc.strerror}") from None
    if not directory.is_dir():
        raise OfflineError(f"{directory} is not a directory")


def _open_motor(directory: Path) -> Motor:
    try:
        return Motor.open(directory / MOTOR_FILE)
    except (MotorError, OSError) as exc:
        raise OfflineError(f"cannot open {directory / MOTOR_FILE}: {exc}") from None


def open_legacy_state(directory: Path) -> tuple[Motor, bytes]:
    """The legacy pump's motor and serial number (made at first start)."""
    _make_directory(directory)
    path = directory / LEGACY_SERIAL_FILE
    try:
        if not path.exists():
            path.write_text(os.urandom(legacy.SERIAL_LEN).hex() + "\n")
        serial = bytes.fromhex(path.read_text().strip())
    except OSError as exc:
        raise OfflineError(f"cannot use {path}: {exc.strerror}") from None
    except ValueError:
        raise OfflineError(f"{path} does not hold a hex serial number") from None
    if len(serial) != legacy.SERIAL_LEN:
        raise OfflineError(f"{path} does not hold a 3-byte serial number")
    return _open_motor(directory), serial


def open_state(directory: Path) -> tuple[Flash, Motor]:
    """Create ``directory`` if needed and open its flash and motor for the pump."""
    _make_directory(directory)
    try:
        flash = Flash.open_file(
            directory / FLASH_FILE,
            sector_size=config.FLASH_SECTOR_SIZE,
            sector_count=config.FLASH_SECTOR_COUNT,
        )
    except (FlashError, OSError) as exc:
        raise OfflineError(f"cannot open {directory / FLASH_FILE}: {exc}") from None
    try:
        motor = _open_motor(directory)
    except OfflineError:
        flash.close()
        raise
    return flash, motor


def _read_flash(directory: Path) -> Flash:
    path = directory / FLASH_FILE
    if not path.exists():
        raise OfflineError(f"no pump state in {directory} (no {FLASH_FILE}; run pumpsim first)")
    try:
        return Flash.open_file(
            path,
            sector_size=config.FLASH_SECTOR_SIZE,
            sector_count=config.FLASH_SECTOR_COUNT,
            read_only=True,
        )
    except (FlashError, OSError) as exc:
        raise OfflineError(f"cannot read {path}: {exc}") from None


def _motor_pulses(directory: Path) -> int:
    try:
        return Motor.read_count(directory / MOTOR_FILE)
    except (MotorError, OSError) as exc:
        raise OfflineError(f"cannot read the motor witness: {exc}") from None


def read_status(directory: Path) -> dict[str, Any]:
    """The ``pumpsim status --json`` object (BRIEF contract)."""
    if not (directory / FLASH_FILE).exists() and (directory / LEGACY_SERIAL_FILE).exists():
        # A legacy pump keeps no ledger: the motor is the only record.
        pulses = _motor_pulses(directory)
        return {
            "legacy": True,
            "paired_remotes": 0,
            "remote_bolus_enabled": True,
            "motor_pulses": pulses,
            "pulse_units": pulses_to_float_units(1),
        }
    flash = _read_flash(directory)
    try:
        try:
            raw = SnapshotStore(flash, *config.FLASH_MAIN_STORE).load()
            state = None if raw is None else decode_state(raw)
            raw_delivery = SnapshotStore(flash, *config.FLASH_DELIVERY_STORE).load()
        except (StorageCorrupt, StateInvalid, StorageError) as exc:
            return {
                "storage_ok": False,
                "storage_error": str(exc),
                "motor_pulses": _motor_pulses(directory),
                "pulse_units": pulses_to_float_units(1),
                "paired_remotes": 0,
                "remote_bolus_enabled": False,
            }
    finally:
        flash.close()
    delivery: dict[str, Any] = {}
    if raw_delivery is not None:
        try:
            delivery = snapshot_from_bytes(raw_delivery)
        except DeliverySnapshotInvalid:  # a bad snapshot is reported, not trusted
            delivery = {}
    bolus = int(delivery.get("bolus_delivered", 0))
    basal = int(delivery.get("basal_delivered", 0))
    policy = None if state is None else state.policy
    return {
        "storage_ok": True,
        "paired_remotes": 0 if state is None else len(state.remotes),
        "remote_bolus_enabled": False if state is None else state.remote_bolus_enabled,
        "prescriber_enrolled": False if state is None else state.prescriber is not None,
        "bolus_units_delivered": pulses_to_float_units(bolus),
        "basal_units_delivered": pulses_to_float_units(basal),
        "bolus_pulses_delivered": bolus,
        "basal_pulses_delivered": basal,
        "reservoir_units": pulses_to_float_units(int(delivery.get("reservoir", 0))),
        "motor_pulses": _motor_pulses(directory),
        "motor_base": int(delivery.get("motor_base", 0)),
        "pulse_units": pulses_to_float_units(1),
        "limits": {
            "version": 0 if policy is None else policy.version,
            "max_bolus_units": pulses_to_float_units(
                wire.FACTORY_MAX_BOLUS_PULSES if policy is None else policy.max_bolus_pulses
            ),
            "max_1h_units": pulses_to_float_units(
                wire.FACTORY_MAX_1H_PULSES if policy is None else policy.max_1h_pulses
            ),
            "max_24h_units": pulses_to_float_units(
                wire.FACTORY_MAX_24H_PULSES if policy is None else policy.max_24h_pulses
            ),
        },
        "commands_remembered": 0 if state is None else len(state.outcomes),
        "pairing_failures": 0 if state is None else state.pairing_failures,
        "boot_count": 0 if state is None else state.boot_count,
    }


def read_log(directory: Path) -> list[AuditEntry]:
    """Every retained audit entry, after verifying the chain.

    Raises:
        LogInvalid: a signature, the hash chain or the seq order is broken.
    """
    flash = _read_flash(directory)
    try:
        raw = SnapshotStore(flash, *config.FLASH_MAIN_STORE).load()
        if raw is None:
            return []
        state = decode_state(raw)
        key = Ed25519PrivateKey.from_private_bytes(state.audit_key)
        audit = AuditLog(flash, *config.FLASH_AUDIT, signing_key=key)
        entries = audit.entries()
    except (StorageCorrupt, StateInvalid, StorageError) as exc:
        raise OfflineError(f"storage unreadable: {exc}") from None
    finally:
        flash.close()
    try:
        verify_entries([entry.signed for entry in entries], key.public_key().public_bytes_raw())
    except AuditVerificationError as exc:
        raise LogInvalid(str(exc)) from None
    return entries
