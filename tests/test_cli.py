"""The command-line contract of ``pumpctl`` and ``pumpsim`` (BRIEF, SPEC §12.5, §13).

Most cases call each tool's ``main(argv)`` in this process (fast, and
``capsys`` sees exactly what a terminal would); a few run the installed
console scripts to prove the same exit statuses reach the shell.  The
prescriber policy round trip and the demo run as real processes.

What these tests stop:

* a bad argument, unit, port, keys directory or state directory ending in a
  traceback, a silent success, several lines of noise, or the wrong exit
  status (0 ok, 2 usage or link, 3 refused by the pump, 4 unknown);
* an error that changes the keys directory: every failing command leaves
  every file byte for byte as it was (nothing corrupted, nothing journaled
  that was never sent -- S7's journal only ever holds real commands);
* a corrupt pump state directory read as if it were fine (S8);
* the command key changing the limits, or an old policy rolled back onto the
  pump (S6): limits change only with the prescriber's signature, and only
  forward;
* ``pumpctl demo`` no longer showing the replay refused by pumpguard and
  delivered by the recalled design.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from test_e2e_pty import (
    PumpSim,
    ctl,
    json_lines,
    motor_matches_ledger,
    one_error_line,
    run_tool,
    sim_status,
    snapshot,
)
from test_e2e_pty import (
    pair as pair_over_pty,
)

import pumpguard.firmware_sim.cli
import pumpguard.host.cli
from pumpguard.firmware_sim import config
from pumpguard.firmware_sim.motor import Motor
from pumpguard.firmware_sim.offline import FLASH_FILE, MOTOR_FILE, open_state
from pumpguard.firmware_sim.pump import Pump
from pumpguard.host.inmemory import Rig
from pumpguard.host.journal import JOURNAL_FILE, Journal
from pumpguard.host.keystore import KEY_FILE, PAIRING_FILE, KeyStore
from pumpguard.host.transport import create_vnull

Main = Callable[[list[str]], int]
Capture = pytest.CaptureFixture[str]

#: A port that opens and carries nothing back but our own bytes.
LOOP = "loop://"


def run(main: Main, argv: list[str], capsys: Capture) -> tuple[int, str, str]:
    """Call ``main(argv)`` as the console script would; (status, stdout, stderr)."""
    try:
        status = main(argv)
    except SystemExit as exc:  # argparse
        status = exc.code if isinstance(exc.code, int) else 2
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def pumpctl(argv: list[str], capsys: Capture) -> tuple[int, str, str]:
    return run(pumpguard.host.cli.main, argv, capsys)


def pumpsim(argv: list[str], capsys: Capture) -> tuple[int, str, str]:
    return run(pumpguard.firmware_sim.cli.main, argv, capsys)


def paired_keys(directory: Path) -> Path:
    """A keys directory really paired with an in-memory pump (SPEC §9), journal closed."""
    rig = Rig(seed="cli")
    remote = rig.attach(directory, seed="cli-remote")
    with remote.journal:
        rig.pair(remote.client)
    assert remote.keys.pairing() is not None
    return directory


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    return paired_keys(tmp_path / "keys")


# --- usage errors -----------------------------------------------------------

USAGE_ERRORS = [
    pytest.param([], id="no-command"),
    pytest.param(["--port", LOOP, "--keys", "K", "frobnicate"], id="unknown-command"),
    pytest.param(["--port", LOOP, "--keys", "K", "bolus"], id="bolus-without-units"),
    pytest.param(["--port", LOOP, "--keys", "K", "bolus", "1", "2"], id="extra-argument"),
    pytest.param(["--port", LOOP, "--keys", "K", "status", "--json"], id="option-after-command"),
    pytest.param(["--port"], id="port-without-value"),
    pytest.param(["policy"], id="policy-without-subcommand"),
    pytest.param(["policy", "sign", "--key", "k"], id="policy-sign-missing-options"),
    pytest.param(["link", "frob"], id="unknown-link-tool"),
]


@pytest.mark.parametrize("argv", USAGE_ERRORS)
def test_malformed_arguments_exit_2_with_the_error_last(
    argv: list[str], capsys: Capture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # "K" would be created here if anything got that far
    status, out, err = pumpctl(argv, capsys)
    assert status == 2
    assert out == ""
    usage = re.fullmatch(
        r"(pumpctl(?: [a-z]+)*): (.+) \(see '(pumpctl(?: [a-z]+)*) --help'\)",
        err.strip().splitlines()[-1],
    )
    assert usage is not None, err
    assert usage[1] == usage[3]  # the help that is pointed to is the one for this command
    assert not (tmp_path / "K").exists()


@pytest.mark.parametrize("argv", USAGE_ERRORS)
def test_malformed_arguments_print_exactly_one_line(
    argv: list[str], capsys: Capture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: argparse printed a (wrapped) usage block before the error, so a
    malformed command line gave 2-4 lines on stderr, not the one line the contract promises."""
    monkeypatch.chdir(tmp_path)
    _, _, err = pumpctl(argv, capsys)
    line = one_error_line(err, prog=err.split(":")[0])
    assert "usage:" not in line


@pytest.mark.parametrize("command", ["pair", "status", "bolus 1", "history", "unpair", "cancel"])
def test_missing_port_or_keys_is_one_line(command: str, capsys: Capture, tmp_path: Path) -> None:
    for argv in (["--keys", str(tmp_path / "k")], ["--port", LOOP]):
        status, _out, err = pumpctl([*argv, *command.split()], capsys)
        assert status == 2
        assert "needs --port PORT and --keys DIR" in one_error_line(err)
    assert not (tmp_path / "k").exists()


# --- units ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("units", "says"),
    [
        ("0.07", "not a multiple of the pump's 0.05 U pulse"),
        ("0.000000001", "not a multiple of the pump's 0.05 U pulse"),
        ("-1", "'-1' is not a number of units (like 1.5)"),
        ("abc", "not a number of units"),
        ("1e400", "'1e400' is not a number of units"),
        ("999999999", "far beyond any dose"),
        ("0", "0 U is not a positive dose"),
        ("0.00", "not a positive dose"),
        ("nan", "'nan' is not a number of units"),
        ("inf", "'inf' is not a number of units"),
        ("", "not a number of units"),
        ("1,5", "not a number of units"),
        ("0x10", "not a number of units"),
        ("1e-400", "'1e-400' is not a number of units"),
        (".5", "'.5' is not a number of units"),
        ("1.", "not a number of units"),
        ("+1", "not a number of units"),
        ("\uff11", "not a number of units"),  # fullwidth digit one
        ("1.0000000000", "not a number of units"),  # more than 9 decimals
    ],
)
def test_bad_units_are_refused_before_anything_is_sent(
    units: str, says: str, keys: Path, capsys: Capture
) -> None:
    before = snapshot(keys)
    status, out, err = pumpctl(["--port", LOOP, "--keys", str(keys), "bolus", units], capsys)
    assert status == 2
    assert says in one_error_line(err)
    assert out == ""
    assert snapshot(keys) == before  # nothing journaled


def test_bad_units_through_the_console_script(tmp_path: Path) -> None:
    result = run_tool("pumpctl", "--port", LOOP, "--keys", str(tmp_path / "k"), "bolus", "-1")
    assert result.returncode == 2
    assert "'-1' is not a number of units" in one_error_line(result.stderr)


# --- not paired -------------------------------------------------------------


@pytest.mark.parametrize("command", ["status", "bolus 1", "history", "unpair", "cancel"])
def test_commands_before_pairing_say_so(command: str, capsys: Capture, tmp_path: Path) -> None:
    keys = tmp_path / "fresh"
    status, _, err = pumpctl(["--port", LOOP, "--keys", str(keys), *command.split()], capsys)
    assert status == 2
    assert "no pump paired" in one_error_line(err)
    assert "pumpctl pair" in err
    # No key was made for a pump nobody paired with.
    assert not (keys / KEY_FILE).exists()
    assert not (keys / PAIRING_FILE).exists()
    assert (keys.stat().st_mode & 0o777) == 0o700


def test_bolus_before_pairing_journals_nothing(capsys: Capture, tmp_path: Path) -> None:
    """Regression: RemoteClient.bolus journaled the command before connect() found there
    was no pairing, leaving a pending bolus that was never sent (and exit 4, not 2)."""
    keys = tmp_path / "fresh"
    KeyStore.open(keys)
    Journal.open(keys).close()
    before = snapshot(keys)
    status, _, err = pumpctl(["--port", LOOP, "--keys", str(keys), "bolus", "1"], capsys)
    assert status == 2
    assert "no pump paired" in one_error_line(err)
    assert snapshot(keys) == before


# --- wrong ports ------------------------------------------------------------


@pytest.mark.parametrize(
    ("port", "says"),
    [
        ("/nonexistent/ttyUSB9", "no such device"),
        ("socket://127.0.0.1:1", "cannot open port socket://127.0.0.1:1"),
        ("bogus://x", "not known"),
        ("REGULAR_FILE", "not a serial port"),
    ],
)
@pytest.mark.parametrize("command", ["status", "bolus 1", "pair"])
def test_wrong_port_is_one_line_and_changes_nothing(
    port: str, says: str, command: str, keys: Path, capsys: Capture, tmp_path: Path
) -> None:
    if port == "REGULAR_FILE":
        port = str(tmp_path / "regular")
        Path(port).write_text("not a tty\n")
    before = snapshot(keys)
    status, _, err = pumpctl(["--port", port, "--keys", str(keys), *command.split()], capsys)
    assert status == 2
    line = one_error_line(err)
    assert line.startswith(f"pumpctl: cannot open port {port}")
    assert says in line
    assert snapshot(keys) == before


def test_wrong_port_through_the_console_script(keys: Path) -> None:
    before = snapshot(keys)
    result = run_tool("pumpctl", "--port", "/nonexistent/tty", "--keys", str(keys), "status")
    assert result.returncode == 2
    assert "cannot open port /nonexistent/tty" in one_error_line(result.stderr)
    assert snapshot(keys) == before


# --- corrupt keys directories -----------------------------------------------


def _truncate_key(keys: Path) -> None:
    (keys / KEY_FILE).write_bytes((keys / KEY_FILE).read_bytes()[:31])


def _key_readable(keys: Path) -> None:
    (keys / KEY_FILE).chmod(0o644)


def _key_missing(keys: Path) -> None:
    (keys / KEY_FILE).unlink()


def _pairing_garbage(keys: Path) -> None:
    (keys / PAIRING_FILE).write_bytes(b"\x00garbage{")


def _pairing_wrong_id(keys: Path) -> None:
    document = json.loads((keys / PAIRING_FILE).read_text())
    document["pump_id"] = "00" * 8
    (keys / PAIRING_FILE).write_text(json.dumps(document))


def _pairing_writable(keys: Path) -> None:
    (keys / PAIRING_FILE).chmod(0o666)


def _journal_bad_crc(keys: Path) -> None:
    path = keys / JOURNAL_FILE
    path.write_bytes(b"00000000" + path.read_bytes()[8:])


def _journal_garbage_line(keys: Path) -> None:
    with (keys / JOURNAL_FILE).open("ab") as handle:
        handle.write(b"deadbeef {not json}\n")


CORRUPTIONS: dict[str, tuple[Callable[[Path], None], str]] = {
    "key-truncated": (_truncate_key, "remote.key is corrupt"),
    "key-readable-by-others": (_key_readable, "chmod 600"),
    "key-missing": (_key_missing, "remote.key is missing"),
    "pairing-garbage": (_pairing_garbage, "pump.json is corrupt"),
    "pairing-wrong-id": (_pairing_wrong_id, "pump id does not match"),
    "pairing-writable-by-others": (_pairing_writable, "chmod 600"),
    "journal-bad-checksum": (_journal_bad_crc, "journal"),
    "journal-garbage-line": (_journal_garbage_line, "journal"),
}


@pytest.mark.parametrize("command", ["status", "history", "cancel"])
@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_corrupt_keys_directory_is_one_line_and_left_as_is(
    corruption: str, command: str, keys: Path, capsys: Capture
) -> None:
    damage, says = CORRUPTIONS[corruption]
    damage(keys)
    before = snapshot(keys)
    status, _, err = pumpctl(["--port", LOOP, "--keys", str(keys), command], capsys)
    assert status == 2
    assert says in one_error_line(err)
    assert snapshot(keys) == before


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_bolus_with_a_corrupt_keys_directory_journals_nothing(
    corruption: str, keys: Path, capsys: Capture
) -> None:
    """Regression (key-* cases): RemoteClient.bolus journaled the command before connect()
    read the key, so a bad key left a pending bolus that was never sent."""
    damage, says = CORRUPTIONS[corruption]
    damage(keys)
    before = snapshot(keys)
    status, _, err = pumpctl(["--port", LOOP, "--keys", str(keys), "bolus", "1"], capsys)
    assert status == 2
    assert says in one_error_line(err)
    assert snapshot(keys) == before


def test_keys_path_that_is_a_file(capsys: Capture, tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_bytes(b"not a directory")
    status, _, err = pumpctl(["--port", LOOP, "--keys", str(path), "status"], capsys)
    assert status == 2
    assert "is a file, not a directory" in one_error_line(err)
    assert path.read_bytes() == b"not a directory"


def test_half_unpaired_keys_can_be_cleaned_up_as_advised(keys: Path, capsys: Capture) -> None:
    """Regression: the advice 'run pumpctl unpair, then pair again' could not be followed:
    RemoteClient.unpair connected first, which raised the same KeyStoreError, so pump.json
    was never erased and every pumpctl command kept failing."""
    (keys / KEY_FILE).unlink()  # a power cut inside erase_pairing
    _, _, err = pumpctl(["--port", LOOP, "--keys", str(keys), "status"], capsys)
    assert "run pumpctl unpair" in err
    status, out, err = pumpctl(["--port", LOOP, "--keys", str(keys), "unpair"], capsys)
    # Done here, but the pump was not told: exit 2, and the user is sent to the pump's menu.
    assert status == 2
    assert out == ""
    assert "unpair it on the pump's menu too" in one_error_line(err)
    assert not (keys / PAIRING_FILE).exists()
    assert not (keys / KEY_FILE).exists()
    # ... and the keys directory is usable again: it now just says "not paired".
    status, _, err = pumpctl(["--port", LOOP, "--keys", str(keys), "status"], capsys)
    assert status == 2
    assert "no pump paired" in one_error_line(err)


# --- prescriber policy tool (offline part) ----------------------------------


@pytest.fixture
def prescriber(tmp_path: Path, capsys: Capture) -> tuple[Path, Path]:
    private, public = tmp_path / "prescriber.key", tmp_path / "prescriber.pub"
    status, out, err = pumpctl(
        ["policy", "keygen", "--private", str(private), "--public", str(public)], capsys
    )
    assert status == 0, err
    assert str(private) in out
    assert (private.stat().st_mode & 0o777) == 0o600
    assert public.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    assert "PRIVATE" not in out
    return private, public


def test_keygen_never_overwrites_a_key(
    prescriber: tuple[Path, Path], capsys: Capture, tmp_path: Path
) -> None:
    private, public = prescriber
    before = (private.read_bytes(), public.read_bytes())
    status, _, err = pumpctl(
        ["policy", "keygen", "--private", str(private), "--public", str(tmp_path / "new.pub")],
        capsys,
    )
    assert status == 2
    assert "not overwriting" in one_error_line(err)
    assert (private.read_bytes(), public.read_bytes()) == before
    assert not (tmp_path / "new.pub").exists()


SIGN_ERRORS = [
    pytest.param({"--pump-id": "00"}, "pump id must be 8 bytes", id="short-pump-id"),
    pytest.param(
        {"--pump-id": "zz" * 8}, "--pump-id 'zzzzzzzzzzzzzzzz' is not hex", id="non-hex-pump-id"
    ),
    pytest.param({"--max-bolus": "0.07"}, "multiple", id="units-not-pulses"),
    pytest.param({"--max-bolus": "abc"}, "not a number", id="units-not-number"),
    pytest.param({"--max-bolus": "20"}, "out of bounds", id="bolus-above-hour"),
    pytest.param({"--key": "PUBLIC"}, "not an unencrypted PEM private key", id="public-as-private"),
    pytest.param({"--key": "MISSING"}, "cannot read prescriber key", id="missing-key"),
]


@pytest.mark.parametrize(("change", "says"), SIGN_ERRORS)
def test_policy_sign_refuses_bad_input_and_writes_nothing(
    change: dict[str, str],
    says: str,
    prescriber: tuple[Path, Path],
    capsys: Capture,
    tmp_path: Path,
) -> None:
    private, public = prescriber
    options = {
        "--key": str(private),
        "--pump-id": "0123456789abcdef",
        "--version": "2",
        "--max-bolus": "2",
        "--max-1h": "5",
        "--max-24h": "20",
        "--out": str(tmp_path / "policy.json"),
    }
    options.update(change)
    options["--key"] = {"PUBLIC": str(public), "MISSING": str(tmp_path / "nope")}.get(
        options["--key"], options["--key"]
    )
    argv = ["policy", "sign", *[item for pair_ in options.items() for item in pair_]]
    status, _, err = pumpctl(argv, capsys)
    assert status == 2
    assert says in one_error_line(err)
    assert not (tmp_path / "policy.json").exists()


@pytest.mark.parametrize(
    "content",
    [None, b"", b"{}", b'{"policy": "zz", "signature": "00"}', b"\xff\xfe garbage"],
)
def test_policy_upload_of_a_bad_file_is_one_line(
    content: bytes | None, keys: Path, capsys: Capture, tmp_path: Path
) -> None:
    path = tmp_path / "policy.json"
    if content is not None:
        path.write_bytes(content)
    before = snapshot(keys)
    status, _, err = pumpctl(
        ["--port", LOOP, "--keys", str(keys), "policy", "upload", str(path)], capsys
    )
    assert status == 2
    assert str(path) in one_error_line(err)
    assert snapshot(keys) == before


def test_policy_round_trip_changes_limits_and_refuses_rollback(tmp_path: Path) -> None:
    """S6 with real processes: only the prescriber's key moves the limits, only forward."""
    private, public = tmp_path / "prescriber.key", tmp_path / "prescriber.pub"
    result = run_tool(
        "pumpctl", "policy", "keygen", "--private", str(private), "--public", str(public)
    )
    assert result.returncode == 0, result.stderr
    pump_port, port, cable = create_vnull()
    sim = PumpSim(
        pump_port,
        tmp_path / "state",
        "--auto-confirm",
        "--remote-bolus",
        "--prescriber-key",
        str(public),
    )
    try:
        _policy_round_trip(sim, port, tmp_path, private)
    finally:
        if sim.proc.returncode is None:
            sim.proc.kill()
            sim.proc.wait()
        cable.close()


def _policy_round_trip(sim: PumpSim, port: str, tmp_path: Path, private: Path) -> None:
    keys = tmp_path / "keys"
    assert "[SIMULATED USER --prescriber-key]" in sim.out.text
    pump_id = pair_over_pty(port, keys)["pump_id"]

    def sign(version: int, max_bolus: str, out: Path, key: Path = private) -> None:
        signed = run_tool(
            "pumpctl",
            "policy",
            "sign",
            "--key",
            str(key),
            "--pump-id",
            pump_id,
            "--version",
            str(version),
            "--max-bolus",
            max_bolus,
            "--max-1h",
            "5",
            "--max-24h",
            "20",
            "--out",
            str(out),
        )
        assert signed.returncode == 0, signed.stderr

    def limits() -> dict[str, float]:
        status = ctl(port, keys, "--json", "status")
        assert status.returncode == 0, status.stderr
        found: dict[str, float] = json_lines(status.stdout)[0]["limits"]
        return found

    assert limits()["max_bolus_units"] == 10.0  # factory
    sign(2, "2", tmp_path / "v2.json")
    uploaded = ctl(port, keys, "policy", "upload", str(tmp_path / "v2.json"))
    assert uploaded.returncode == 0, uploaded.stderr
    assert limits() == {
        "version": 2,
        "max_bolus_units": 2.0,
        "max_1h_units": 5.0,
        "max_24h_units": 20.0,
    }

    # The same policy again, and an older one: rollbacks, refused (status 3).
    sign(1, "4", tmp_path / "v1.json")
    for name in ("v2.json", "v1.json"):
        again = ctl(port, keys, "policy", "upload", str(tmp_path / name))
        assert again.returncode == 3, name
        assert "not newer" in one_error_line(again.stderr)
    # A policy signed by anyone else (say, whoever holds the command key): refused.
    other_private, other_public = tmp_path / "other.key", tmp_path / "other.pub"
    made = run_tool(
        "pumpctl",
        "policy",
        "keygen",
        "--private",
        str(other_private),
        "--public",
        str(other_public),
    )
    assert made.returncode == 0
    sign(9, "4", tmp_path / "forged.json", key=other_private)
    forged = ctl(port, keys, "policy", "upload", str(tmp_path / "forged.json"))
    assert forged.returncode == 3
    assert "not signed by the enrolled prescriber" in one_error_line(forged.stderr)
    assert limits()["version"] == 2

    # The new limit holds: 2.05 U is refused, 2 U is delivered.
    over = ctl(port, keys, "bolus", "2.05")
    assert over.returncode == 3
    assert "single-bolus limit" in one_error_line(over.stderr)
    ok = ctl(port, keys, "--json", "bolus", "2")
    assert ok.returncode == 0, ok.stderr

    sim.stop()
    final = sim_status(sim.state)
    assert final["prescriber_enrolled"] is True
    assert final["limits"]["version"] == 2
    assert final["limits"]["max_bolus_units"] == 2.0
    assert final["bolus_pulses_delivered"] == 40
    motor_matches_ledger(final)


# --- pumpsim ----------------------------------------------------------------


def test_pumpsim_status_of_a_missing_state_directory(capsys: Capture, tmp_path: Path) -> None:
    for command in ("status", "log"):
        for extra in ([], ["--json"]):
            status, out, err = pumpsim([command, "--state", str(tmp_path / "nope"), *extra], capsys)
            assert status == 2
            assert "no pump state in" in one_error_line(err, "pumpsim")
            assert out == ""
    assert not (tmp_path / "nope").exists()  # looking creates nothing


def _state_dir(tmp_path: Path) -> Path:
    """A real state directory: the firmware booted once on file-backed flash and motor."""
    state = tmp_path / "state"
    flash, motor = open_state(state)
    try:
        Pump.boot(flash=flash, motor=motor, random_bytes=os.urandom, now=0.0)
    finally:
        flash.close()
        motor.close()
    return state


def test_pumpsim_status_and_log_of_a_good_state_directory(capsys: Capture, tmp_path: Path) -> None:
    state = _state_dir(tmp_path)
    status, out, err = pumpsim(["status", "--state", str(state), "--json"], capsys)
    assert status == 0, err
    data = json.loads(out)
    for name, kind in [
        ("paired_remotes", int),
        ("remote_bolus_enabled", bool),
        ("bolus_units_delivered", float),
        ("basal_units_delivered", float),
        ("motor_pulses", int),
        ("pulse_units", float),
        ("limits", dict),
    ]:
        assert isinstance(data[name], kind), name
    assert data["limits"]["max_bolus_units"] == 10.0
    status, out, err = pumpsim(["log", "--state", str(state), "--json"], capsys)
    assert status == 0, err
    assert [json.loads(line)["event"] for line in out.splitlines()] == ["boot"]


@pytest.mark.parametrize(
    ("damage", "commands", "says"),
    [
        ("flash-wrong-size", ("status", "log"), "is 3 bytes, expected"),
        ("motor-garbage", ("status",), "cannot read the motor witness"),
    ],
)
def test_pumpsim_status_of_an_unreadable_state_directory(
    damage: str, commands: tuple[str, ...], says: str, capsys: Capture, tmp_path: Path
) -> None:
    state = _state_dir(tmp_path)
    if damage == "flash-wrong-size":
        (state / FLASH_FILE).write_bytes(b"hi\n")
    else:
        (state / MOTOR_FILE).write_bytes(b"PGM1" + os.urandom(28))  # two torn slots
    before = snapshot(state)
    for command in commands:
        status, out, err = pumpsim([command, "--state", str(state), "--json"], capsys)
        assert status == 2, command
        assert says in one_error_line(err, "pumpsim")
        assert out == ""
    assert snapshot(state) == before


def _scramble_flash(state: Path) -> None:
    size = config.FLASH_SECTOR_SIZE * config.FLASH_SECTOR_COUNT
    (state / FLASH_FILE).write_bytes(os.urandom(size))


def test_pumpsim_log_of_a_corrupt_flash_fails(capsys: Capture, tmp_path: Path) -> None:
    state = _state_dir(tmp_path)
    _scramble_flash(state)
    before = snapshot(state)
    status, _out, err = pumpsim(["log", "--state", str(state)], capsys)
    assert status != 0
    assert "storage unreadable" in one_error_line(err, "pumpsim")
    assert snapshot(state) == before


def test_pumpsim_status_of_a_corrupt_flash_never_looks_healthy(
    capsys: Capture, tmp_path: Path
) -> None:
    state = _state_dir(tmp_path)
    _scramble_flash(state)
    before = snapshot(state)
    status, out, err = pumpsim(["status", "--state", str(state), "--json"], capsys)
    assert status == 2
    assert f"pump storage in {state} is corrupt" in one_error_line(err, "pumpsim")
    assert snapshot(state) == before
    data = json.loads(out)
    assert data["storage_ok"] is False
    # Never more permissive than a healthy pump: nothing paired, remote bolus off (S8).
    assert data["paired_remotes"] == 0
    assert data["remote_bolus_enabled"] is False
    assert data["motor_pulses"] == Motor.read_count(state / MOTOR_FILE)


def test_pumpsim_status_of_a_corrupt_flash_is_an_error(capsys: Capture, tmp_path: Path) -> None:
    """Regression: 'pumpsim status' on a corrupt flash image exited 0 (storage_ok=false only
    inside the report) instead of a clear error and a non-zero status."""
    state = _state_dir(tmp_path)
    _scramble_flash(state)
    status, out, err = pumpsim(["status", "--state", str(state)], capsys)
    assert status == 2
    line = one_error_line(err, "pumpsim")
    assert line.startswith(f"pumpsim: pump storage in {state} is corrupt: ")
    assert "storage_ok: False" in out.splitlines()  # the report itself still comes first


def test_pumpsim_status_through_the_console_script(tmp_path: Path) -> None:
    result = run_tool("pumpsim", "status", "--state", str(tmp_path / "nope"), "--json")
    assert result.returncode == 2
    assert "no pump state in" in one_error_line(result.stderr, "pumpsim")


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (["--port", "/nonexistent/tty"], "cannot open port /nonexistent/tty"),
        (["--port", "bogus://x"], "cannot open port bogus://x"),
        (["--port", "loop://", "--time-scale", "0"], "--time-scale must be a positive number"),
        (["--port", "loop://", "--time-scale", "-5"], "--time-scale must be a positive number"),
        (["--port", "loop://", "--prescriber-key", "MISSING"], "cannot read prescriber key"),
        (["--port", "loop://", "--prescriber-key", "NOT_PEM"], "is not a PEM public key"),
        (["--port", "loop://", "--prescriber-key", "PRIVATE"], "is not a PEM public key"),
    ],
)
def test_pumpsim_refuses_bad_options_and_leaves_state_as_is(
    extra: list[str], says: str, capsys: Capture, tmp_path: Path
) -> None:
    state = _state_dir(tmp_path)
    private = tmp_path / "prescriber.key"
    pumpctl(
        ["policy", "keygen", "--private", str(private), "--public", str(tmp_path / "p")], capsys
    )
    (tmp_path / "not-pem").write_text("hello\n")
    files = {"MISSING": tmp_path / "nope", "NOT_PEM": tmp_path / "not-pem", "PRIVATE": private}
    extra = [str(files[item]) if item in files else item for item in extra]
    before = snapshot(state)
    status, _, err = pumpsim(["--state", str(state), *extra], capsys)
    assert status == 2
    assert says in one_error_line(err, "pumpsim")
    assert snapshot(state) == before


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param([], id="nothing"),
        pytest.param(["--frob"], id="unknown-option"),
        pytest.param(["status"], id="status-without-state"),
        pytest.param(["--state", "S", "--port", "loop://", "--time-scale", "x"], id="bad-float"),
    ],
)
def test_pumpsim_usage_errors_are_one_line(
    argv: list[str], capsys: Capture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: argparse printed a usage block before the error (several lines)."""
    monkeypatch.chdir(tmp_path)
    status, out, err = pumpsim(argv, capsys)
    assert status == 2
    assert out == ""
    usage = re.fullmatch(
        r"(pumpsim(?: [a-z]+)*): (.+) \(see '(pumpsim(?: [a-z]+)*) --help'\)",
        one_error_line(err, prog=err.split(":")[0]),
    )
    assert usage is not None, err
    assert usage[1] == usage[3]
    assert not (tmp_path / "S").exists()


# --- demo -------------------------------------------------------------------


def test_demo_refuses_the_replay_and_shows_the_legacy_replay_delivered() -> None:
    result = run_tool("pumpctl", "demo")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert re.search(r"the pump refused (\d+)", out)
    sent, refused = re.findall(r"(\d+) recorded frames sent again; the pump refused (\d+)", out)[0]
    assert sent == refused != "0"
    assert "bolus delivered by the replay: 0 U" in out
    assert "refused by the pump: over the pump's single-bolus limit" in out
    assert "pumpguard: replayed bolus delivered 0 U more (must be 0)" in out
    assert re.search(r"recalled design: replayed bolus delivered (?!0 U)[\d.]+ U more", out)
    assert "attacker replays the recording: 1 U delivered AGAIN" in out
