"""End to end: ``pumpsim`` and ``pumpctl`` as separate processes over a pty pair.

The pty pair is a virtual null-modem cable made in the test process with
:func:`host.transport.create_vnull`; ``pumpsim`` opens one end and every
``pumpctl`` the other, exactly as a tester does in two terminals.  The pump's
clock runs 50 times faster (``--time-scale 50``), so a 1 U bolus (20 pulses,
2 s each, SPEC §12.3) takes 0.8 s.  What is checked is what the processes
leave behind: exit statuses, their output, the remote's journal and keys
directory, and the pump's state directory read offline by
``pumpsim status --json`` / ``pumpsim log --json`` -- ``motor_pulses`` is
counted by the simulated motor itself, outside the firmware's storage.

What these tests stop:

* the command-line contract drifting from the brief: pair, bolus, status,
  history, cancel (Ctrl-C during a bolus and ``pumpctl cancel``), unpair,
  exit statuses 0/2/3 and their one-line errors (SPEC §9, §12);
* a remote with nobody to compare the pairing code confirming it blindly
  (S4, SPEC §9.6): only ``pair --auto-confirm`` simulates that, and says so;
* a ``pumpctl`` killed after sending a bolus and before the reply making the
  pump deliver twice, or losing the outcome: the next ``pumpctl`` settles the
  journaled command with the pump's answer (S7, SPEC §12.4);
* a dead link losing or corrupting anything in the keys directory, and a
  bolus sent into a dead link being forgotten instead of settled (S7);
* ``-v`` logs that leak keys, the pairing code, session keys or plaintext
  instead of only direction, type, length, counter and verdict (S12);
* the motor moving without the ledger knowing, or the audit log missing a
  delivery or an unpairing (S8, S10, S11);
* ``pumpsim`` ending when its cable is pulled, or when the remote stops
  reading, instead of counting a link event, delivering basal throughout and
  taking the link back when it returns ([fail-safe] 8, SPEC §3.1).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import sysconfig
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest

from pumpguard.firmware_sim import config
from pumpguard.firmware_sim.flash import Flash
from pumpguard.firmware_sim.offline import FLASH_FILE
from pumpguard.firmware_sim.runner import MAX_PENDING_OUTPUT
from pumpguard.firmware_sim.state import decode_state
from pumpguard.firmware_sim.store import SnapshotStore
from pumpguard.host.journal import Journal, SettledCommand
from pumpguard.host.keystore import KEY_FILE, PAIRING_FILE, KeyStore
from pumpguard.host.transport import VirtualNullModem, create_vnull
from pumpguard.protocol import (
    FrameDecoder,
    HandshakeInitiator,
    Outcome,
    ProtocolError,
    RecordType,
    SecureSession,
    Status,
    StatusRequest,
    decode_message,
    encode_frame,
    encode_message,
    paired_peer,
    pulses_to_units,
)

pytestmark = pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs ptys (POSIX)")

REPO = Path(__file__).resolve().parent.parent
#: The pump's clock runs this much faster: one 2 s pulse every 40 ms.
TIME_SCALE = "50"
#: Pulses in 1 U (one pulse is 0.05 U).
PULSES_PER_UNIT = 20
#: How long any single step may take before the test fails instead of hanging.
STEP_TIMEOUT_S = 30.0

_MODULES = {"pumpctl": "pumpguard.host.cli", "pumpsim": "pumpguard.firmware_sim.cli"}

#: Children import this checkout, whatever is installed, and flush as they go.
ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    "PYTHONUNBUFFERED": "1",
}


def command(name: str, prelude: str = "") -> list[str]:
    """How to run ``pumpctl`` / ``pumpsim``: the console script of this
    interpreter if installed, else the same ``main`` through ``-c``.

    ``prelude`` is Python run before ``main`` (the secret spy of the ``-v``
    test); it forces the ``-c`` form.
    """
    if not prelude:
        script = shutil.which(name, path=sysconfig.get_path("scripts"))
        if script is not None:
            return [script]
    code = f"{prelude}\nimport sys\nfrom {_MODULES[name]} import main\nsys.exit(main())\n"
    return [sys.executable, "-c", code]


class Output:
    """The lines a child writes on one stream, collected by a thread as they come."""

    def __init__(self, stream: IO[str] | None) -> None:
        assert stream is not None
        self.lines: list[str] = []
        self.closed = False
        self._condition = threading.Condition()
        self._thread = threading.Thread(target=self._collect, args=(stream,), daemon=True)
        self._thread.start()

    def _collect(self, stream: IO[str]) -> None:
        for line in stream:
            with self._condition:
                self.lines.append(line.rstrip("\n"))
                self._condition.notify_all()
        with self._condition:
            self.closed = True
            self._condition.notify_all()

    def count(self, text: str) -> int:
        with self._condition:
            return sum(text in line for line in self.lines)

    def wait_for(self, text: str, *, count: int = 1, timeout: float = STEP_TIMEOUT_S) -> None:
        """Block until ``count`` lines contain ``text``; fail (not hang) otherwise."""
        with self._condition:
            self._condition.wait_for(
                lambda: sum(text in line for line in self.lines) >= count or self.closed,
                timeout,
            )
            seen = sum(text in line for line in self.lines)
        assert seen >= count, f"never saw {text!r} x{count}; output so far:\n{self.text}"

    def join(self) -> None:
        self._thread.join(timeout=STEP_TIMEOUT_S)

    @property
    def text(self) -> str:
        with self._condition:
            return "\n".join(self.lines)


class PumpSim:
    """A running ``pumpsim`` process on one end of the cable."""

    def __init__(
        self,
        port: str,
        state: Path,
        *flags: str,
        prelude: str = "",
        env: dict[str, str] | None = None,
    ) -> None:
        self.state = state
        self.proc = subprocess.Popen(  # noqa: S603 -- our own tools, fixed arguments
            [
                *command("pumpsim", prelude),
                "--port",
                port,
                "--state",
                str(state),
                "--time-scale",
                TIME_SCALE,
                *flags,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env or ENV,
        )
        self.out = Output(self.proc.stdout)
        self.err = Output(self.proc.stderr)
        try:
            self.out.wait_for("[pump] running on")
        except AssertionError:
            self.proc.kill()
            raise AssertionError(f"pumpsim did not start: {self.err.text}") from None

    def stop(self) -> None:
        """SIGTERM, as a tester's Ctrl-C; the pump must stop cleanly (status 0)."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                status = self.proc.wait(timeout=STEP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError("pumpsim ignored SIGTERM") from None
            self.out.join()
            self.err.join()
            assert status == 0, f"pumpsim exited {status}:\n{self.err.text}"
            assert "[pump] stopped" in self.out.text


StartPump = Callable[..., PumpSim]


@pytest.fixture
def cable() -> Iterator[tuple[str, str]]:
    """Both ends of a virtual null-modem cable: (pump's port, remote's port)."""
    pump_port, remote_port, closer = create_vnull()
    try:
        yield pump_port, remote_port
    finally:
        closer.close()


@pytest.fixture
def start_pump(cable: tuple[str, str], tmp_path: Path) -> Iterator[StartPump]:
    """Start ``pumpsim`` on the cable (state in ``tmp_path/state`` unless given)."""
    started: list[PumpSim] = []

    def start(
        *flags: str,
        state: Path | None = None,
        prelude: str = "",
        port: str | None = None,
        **env: str,
    ) -> PumpSim:
        sim = PumpSim(
            port or cable[0],
            state or tmp_path / "state",
            *flags,
            prelude=prelude,
            env={**ENV, **env} if env else None,
        )
        started.append(sim)
        return sim

    yield start
    for sim in started:
        if sim.proc.returncode is None:
            sim.proc.kill()
            sim.proc.wait()


def ctl(
    port: str,
    keys: Path,
    *args: str,
    prelude: str = "",
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``pumpctl --port PORT --keys KEYS ARGS...`` to completion, no terminal."""
    return subprocess.run(  # noqa: S603 -- our own tool, fixed arguments
        [*command("pumpctl", prelude), "--port", port, "--keys", str(keys), *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=STEP_TIMEOUT_S,
        env=env or ENV,
        check=False,
    )


def run_tool(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``pumpctl ARGS`` or ``pumpsim ARGS`` with no port or keys added."""
    return subprocess.run(  # noqa: S603 -- our own tool, fixed arguments
        [*command(name), *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=STEP_TIMEOUT_S,
        env=ENV,
        check=False,
    )


def sim_status(state: Path) -> dict[str, Any]:
    """``pumpsim status --state DIR --json``: the pump's own ledger and the motor."""
    result = run_tool("pumpsim", "status", "--state", str(state), "--json")
    assert result.returncode == 0, result.stderr
    status: dict[str, Any] = json.loads(result.stdout)
    return status


def sim_log(state: Path) -> list[dict[str, Any]]:
    """``pumpsim log --state DIR --json``: the verified audit log, one object a line."""
    result = run_tool("pumpsim", "log", "--state", str(state), "--json")
    assert result.returncode == 0, f"audit log does not verify: {result.stderr}"
    return [json.loads(line) for line in result.stdout.splitlines()]


def json_lines(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def one_error_line(stderr: str, prog: str = "pumpctl") -> str:
    """The single ``prog: ...`` line a failure must print (BRIEF contract)."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, f"expected exactly one line on stderr, got:\n{stderr}"
    assert lines[0].startswith(f"{prog}: "), lines[0]
    assert "Traceback" not in stderr
    return lines[0]


def snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    """Every file's bytes and mode, to prove an operation changed nothing."""
    return {
        entry.name: (entry.read_bytes(), stat.S_IMODE(entry.stat().st_mode))
        for entry in sorted(directory.iterdir())
        if entry.is_file()
    }


def journal_state(keys: Path) -> tuple[list[bytes], list[SettledCommand]]:
    """(pending command ids, settled commands) of the keys directory's journal."""
    with Journal.open(keys) as journal:
        return [p.command_id for p in journal.pending()], journal.settled()


def motor_matches_ledger(status: dict[str, Any]) -> None:
    """The motor's own count equals what the firmware says it delivered (S8)."""
    assert status["storage_ok"] is True
    assert status["motor_pulses"] == (
        status["motor_base"] + status["basal_pulses_delivered"] + status["bolus_pulses_delivered"]
    ), status


def pair(port: str, keys: Path) -> dict[str, Any]:
    """``pumpctl --json pair --auto-confirm`` against a ``pumpsim --auto-confirm``.

    Both users are simulated (no terminal to compare codes on); returns the JSON result.
    """
    result = ctl(port, keys, "--json", "pair", "--auto-confirm")
    assert result.returncode == 0, result.stderr
    data = json_lines(result.stdout)[-1]
    assert data["paired"] is True
    assert re.fullmatch(r"[0-9a-f]{16}", data["pump_id"])
    return data


# --- the whole session ------------------------------------------------------


def test_pair_bolus_status_history_cancel_unpair(
    cable: tuple[str, str], start_pump: StartPump, tmp_path: Path
) -> None:
    port = cable[1]
    keys = tmp_path / "keys"
    sim = start_pump("--auto-confirm", "--remote-bolus")
    assert "[SIMULATED USER --auto-confirm]" not in sim.out.text  # nothing asked yet
    assert "[SIMULATED USER --remote-bolus]" in sim.out.text

    # Pairing (SPEC §9): the pump's user is simulated, and says so.
    paired = pair(port, keys)
    assert "[SIMULATED USER --auto-confirm]" in sim.out.text
    assert stat.S_IMODE((keys / KEY_FILE).stat().st_mode) == 0o600
    assert json.loads((keys / PAIRING_FILE).read_text())["pump_id"] == paired["pump_id"]

    # A bolus, exactly once, with its outcome (SPEC §12.3, §12.4).
    result = ctl(port, keys, "--json", "bolus", "0.5")
    assert result.returncode == 0, result.stderr
    [bolus] = json_lines(result.stdout)
    assert bolus["outcome"] == "delivered"
    assert bolus["requested_units"] == bolus["delivered_units"] == 0.5
    assert re.fullmatch(r"[0-9a-f]{32}", bolus["command_id"])
    assert sim.out.count("REMOTE BOLUS 0.5 U started") == 1  # S10: the pump alerts

    # The state directory is readable while the pump runs, and agrees.
    live = sim_status(sim.state)
    assert live["bolus_pulses_delivered"] == 10
    assert live["paired_remotes"] == 1

    result = ctl(port, keys, "--json", "status")
    assert result.returncode == 0, result.stderr
    [status] = json_lines(result.stdout)
    assert status["pump_id"] == paired["pump_id"]
    assert status["remote_bolus_enabled"] is True
    assert status["bolus_units_delivered"] == 0.5
    assert status["active_bolus"] is None
    assert status["limits"]["max_bolus_units"] == 10.0  # factory limits

    # The audit log, verified by pumpctl with the pump's pinned audit key (S10).
    result = ctl(port, keys, "--json", "history")
    assert result.returncode == 0, result.stderr
    history = json_lines(result.stdout)
    assert [e["seq"] for e in history] == list(range(len(history)))
    events = {(e["event"], e.get("cmd_id")) for e in history}
    assert ("paired", None) in events
    assert ("bolus_started", bolus["command_id"]) in events
    assert ("bolus_delivered", bolus["command_id"]) in events

    # Nothing to cancel: refused by the pump, status 3, one line.
    result = ctl(port, keys, "cancel")
    assert result.returncode == 3
    assert "no bolus is in progress" in one_error_line(result.stderr)

    # Ctrl-C during a bolus cancels it on the pump and settles the journal.
    running = subprocess.Popen(  # noqa: S603 -- our own tool, fixed arguments
        [*command("pumpctl"), "--port", port, "--keys", str(keys), "bolus", "5"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    try:
        sim.out.wait_for("REMOTE BOLUS 5 U started")
        time.sleep(0.3)  # a few pulses at 50x
        running.send_signal(signal.SIGINT)
        out, err = running.communicate(timeout=STEP_TIMEOUT_S)
    finally:
        if running.returncode is None:
            running.kill()
            running.wait()
    assert running.returncode == 0, err
    assert "bolus cancelled after" in out
    pending, settled = journal_state(keys)
    assert pending == []
    cancelled = settled[-1]
    assert cancelled.outcome is Outcome.CANCELLED
    assert 0 < cancelled.delivered < 5 * PULSES_PER_UNIT

    # Unpairing erases the key on both sides (S11).
    result = ctl(port, keys, "unpair")
    assert result.returncode == 0, result.stderr
    assert not (keys / KEY_FILE).exists()
    assert not (keys / PAIRING_FILE).exists()
    result = ctl(port, keys, "status")
    assert result.returncode == 2
    assert "no pump paired" in one_error_line(result.stderr)

    sim.stop()
    final = sim_status(sim.state)
    assert final["paired_remotes"] == 0
    assert final["bolus_pulses_delivered"] == 10 + cancelled.delivered
    motor_matches_ledger(final)
    log = sim_log(sim.state)
    delivered = [e for e in log if e["event"] == "bolus_delivered"]
    assert [e["cmd_id"] for e in delivered] == [bolus["command_id"]]
    assert [e["pulses"] for e in log if e["event"] == "bolus_cancelled"] == [cancelled.delivered]
    assert any(e["event"] == "unpaired" for e in log)


def test_pair_without_a_terminal_refuses_instead_of_confirming_blindly(
    cable: tuple[str, str], start_pump: StartPump, tmp_path: Path
) -> None:
    """SPEC §9.6: with nobody to compare the codes, the remote must not confirm them."""
    keys = tmp_path / "keys"
    sim = start_pump("--auto-confirm")
    result = ctl(cable[1], keys, "pair")
    assert result.returncode == 2
    assert "no terminal to confirm the pairing code" in one_error_line(result.stderr)
    assert not (keys / PAIRING_FILE).exists()
    sim.stop()
    assert sim_status(sim.state)["paired_remotes"] == 0


# --- -v: every frame, no secret (S12) ---------------------------------------

#: Run before ``main`` in the ``-v`` test's children: appends every session
#: key and IV and every sealed plaintext, in hex, to ``$PUMPGUARD_SPY``, so
#: the test knows exactly which secrets must not appear in the logs.
SPY = """
import os
import pumpguard.protocol.session as _session
_spy = open(os.environ["PUMPGUARD_SPY"], "a", buffering=1)
_init = _session.SecureSession.__init__
_seal = _session.SecureSession.seal
def _spy_init(self, keys, **kwargs):
    for value in (keys.send_key, keys.send_iv, keys.receive_key, keys.receive_iv):
        _spy.write("key " + value.hex() + "\\n")
    _init(self, keys, **kwargs)
def _spy_seal(self, plaintext):
    _spy.write("plaintext " + plaintext.hex() + "\\n")
    return _seal(self, plaintext)
_session.SecureSession.__init__ = _spy_init
_session.SecureSession.seal = _spy_seal
"""

#: A ``-v`` frame line: time, logger, direction, type, length, [counter], verdict.
FRAME_LINE = re.compile(
    r"\S+ \S+ pumpguard\.(pumpctl|pumpsim) (->|<-) "
    r"(?:(?:[A-Z_]+|type=0x[0-9a-f]{2}) len=\d+(?: ctr=\d+)?|frame) "
    r"(sent|received|accepted|refused \(\w+\)|dropped: .+)"
)


def spied(path: Path, kind: str) -> list[str]:
    return [line.split()[1] for line in path.read_text().splitlines() if line.startswith(kind)]


def test_verbose_logs_every_frame_and_no_secret(
    cable: tuple[str, str], start_pump: StartPump, tmp_path: Path
) -> None:
    port = cable[1]
    keys = tmp_path / "keys"
    pump_spy, remote_spy = tmp_path / "pump.spy", tmp_path / "remote.spy"
    remote_env = {**ENV, "PUMPGUARD_SPY": str(remote_spy)}
    sim = start_pump(
        "--auto-confirm", "--remote-bolus", "-v", prelude=SPY, PUMPGUARD_SPY=str(pump_spy)
    )
    paired = ctl(port, keys, "-v", "pair", "--auto-confirm", prelude=SPY, env=remote_env)
    assert paired.returncode == 0, paired.stderr
    remote_key = (keys / KEY_FILE).read_bytes()
    [code] = re.findall(r"pairing code: (\d{3} \d{3})", paired.stdout)
    bolus = ctl(port, keys, "-v", "bolus", "0.5", prelude=SPY, env=remote_env)
    assert bolus.returncode == 0, bolus.stderr
    status = ctl(port, keys, "-v", "status", prelude=SPY, env=remote_env)
    assert status.returncode == 0, status.stderr
    sim.stop()

    flash = Flash.open_file(
        sim.state / FLASH_FILE,
        sector_size=config.FLASH_SECTOR_SIZE,
        sector_count=config.FLASH_SECTOR_COUNT,
        read_only=True,
    )
    try:
        raw = SnapshotStore(flash, *config.FLASH_MAIN_STORE).load()
    finally:
        flash.close()
    assert raw is not None
    pump_state = decode_state(raw)

    logs = "\n".join([sim.err.text, paired.stderr, bolus.stderr, status.stderr])
    everything = "\n".join([logs, sim.out.text, paired.stdout, bolus.stdout, status.stdout]).lower()

    # Every frame is logged, on both sides, with direction, type, length, counter, verdict.
    frames = [line for line in logs.splitlines() if FRAME_LINE.fullmatch(line)]
    for side in ("pumpctl", "pumpsim"):
        for fragment in ("-> DATA len=", "<- DATA len=", "ctr=", "PAIR_REQUEST len="):
            assert any(f"pumpguard.{side} " in f and fragment in f for f in frames), (
                side,
                fragment,
            )
    assert any(line.endswith(" accepted") for line in frames)
    assert any(line.endswith(" received") for line in frames)
    # Nothing that looks like a frame line is in another shape.
    for line in logs.splitlines():
        if re.search(r" (->|<-) ", line):
            assert FRAME_LINE.fullmatch(line), line

    # The spies saw real secrets (else the checks below could not fail) ...
    session_keys = spied(pump_spy, "key") + spied(remote_spy, "key")
    plaintexts = spied(pump_spy, "plaintext") + spied(remote_spy, "plaintext")
    assert len(spied(pump_spy, "key")) >= 8
    assert len(spied(remote_spy, "key")) >= 8
    assert len(plaintexts) >= 6
    # ... and none of them is anywhere in what the processes printed.
    secrets = {
        "remote static key": remote_key.hex(),
        "pump static key": pump_state.pump_static.hex(),
        "pump audit signing key": pump_state.audit_key.hex(),
    }
    for name, secret in secrets.items():
        assert secret not in everything, name
    for secret in session_keys:
        assert secret not in everything, "session key or IV in the output"
    for plaintext in plaintexts:
        if len(plaintext) >= 16:  # 8+ bytes: no accidental match possible
            assert plaintext not in logs.lower(), "plaintext in a -v log"
    # The code belongs on the two screens, never in a log.
    assert code in paired.stdout
    assert code in sim.out.text
    for form in (code, code.replace(" ", "")):
        assert form not in logs
    # No long hex run at all: keys, ids or payloads have no place in -v logs.
    assert not re.search(r"[0-9a-fA-F]{16}", logs)


# --- killed mid-bolus: exactly once, outcome learned (S7) -------------------


@dataclass
class KillRun:
    """One ``pumpctl bolus 1`` killed at ``trigger``, then ``pumpctl status``.

    ``status`` settles a bolus the pump has finished or never started; one still
    running it only shows (it does not wait for its end), and ``follow`` -- a
    ``pumpctl history``, which does wait -- settles it.
    """

    trigger: str
    pending_after_kill: list[bytes]
    status: subprocess.CompletedProcess[str]
    pending_after_status: list[bytes]
    follow: subprocess.CompletedProcess[str] | None
    settled: dict[bytes, SettledCommand] = field(default_factory=dict)

    @property
    def settler(self) -> subprocess.CompletedProcess[str]:
        """The pumpctl run that settled the killed bolus."""
        return self.status if self.follow is None else self.follow


@dataclass
class KillResults:
    runs: list[KillRun]
    final_status: dict[str, Any]
    log: list[dict[str, Any]]


@pytest.fixture(scope="module")
def killed_boluses(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KillResults]:
    """Kill ``pumpctl bolus 1`` at three moments; settle each with ``pumpctl status``.

    * after it logged BOLUS_PREPARE sent (its first DATA record): usually
      before the challenge came back, so the pump holds a challenge and
      nothing has started;
    * after it logged BOLUS_COMMIT sent (its second DATA record), around the
      moment the pump commits;
    * when the pump's display shows the bolus started: committed for sure.

    Each kill is SIGKILL: no handler runs, exactly like a crash or power cut
    of the remote.  Where a kill lands within a millisecond is up to the
    scheduler, so the test checks what must hold whatever the outcome.
    """
    tmp = tmp_path_factory.mktemp("kill")
    keys = tmp / "keys"
    pump_port, port, closer = create_vnull()
    sim = PumpSim(pump_port, tmp / "state", "--auto-confirm", "--remote-bolus")
    runs: list[KillRun] = []
    try:
        pair(port, keys)
        for trigger in ("prepare sent", "commit sent", "pump started"):
            started = sim.out.count("REMOTE BOLUS 1 U started")
            child = subprocess.Popen(  # noqa: S603 -- our own tool, fixed arguments
                [*command("pumpctl"), "--port", port, "--keys", str(keys), "-v", "bolus", "1"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
                env=ENV,
            )
            try:
                log = Output(child.stderr)
                if trigger == "prepare sent":
                    log.wait_for("-> DATA", count=1)
                elif trigger == "commit sent":
                    log.wait_for("-> DATA", count=2)
                else:
                    sim.out.wait_for("REMOTE BOLUS 1 U started", count=started + 1)
            finally:
                child.kill()
                child.wait()
            pending, _ = journal_state(keys)
            status = ctl(port, keys, "--json", "status")
            still_pending, _ = journal_state(keys)
            follow = ctl(port, keys, "--json", "history") if still_pending else None
            _, settled = journal_state(keys)
            runs.append(
                KillRun(
                    trigger,
                    pending,
                    status,
                    still_pending,
                    follow,
                    {c.command_id: c for c in settled},
                )
            )
        # The journal is clean again: an ordinary bolus goes through.
        after = ctl(port, keys, "--json", "bolus", "0.5")
        assert after.returncode == 0, after.stderr
        sim.stop()
        yield KillResults(runs, sim_status(tmp / "state"), sim_log(tmp / "state"))
    finally:
        if sim.proc.returncode is None:
            sim.proc.kill()
            sim.proc.wait()
        closer.close()


def entries_for(log: list[dict[str, Any]], event: str, command_id: bytes) -> list[dict[str, Any]]:
    return [e for e in log if e["event"] == event and e.get("cmd_id") == command_id.hex()]


def test_killed_bolus_is_delivered_at_most_once_and_settled(killed_boluses: KillResults) -> None:
    log = killed_boluses.log
    total = 0
    for run in killed_boluses.runs:
        assert run.status.returncode == 0, (run.trigger, run.status.stderr)
        # The killed pumpctl had journaled the bolus before sending it ...
        [command_id] = run.pending_after_kill
        if run.pending_after_status:
            # ... 'pumpctl status' found it still running: it shows it, leaves it
            # pending, and does not wait for its end ...
            assert run.pending_after_status == [command_id], run.trigger
            active = json.loads(run.status.stdout)["active_bolus"]
            assert active is not None, (run.trigger, run.status.stdout)
            assert active["command_id"] == command_id.hex()
            assert run.follow is not None
            assert run.follow.returncode == 0, (run.trigger, run.follow.stderr)
        else:
            assert run.follow is None
        # ... and the next pumpctl (that one or the one following it) settled it
        # with the pump's answer.
        settled = run.settled[command_id]
        started = entries_for(log, "bolus_started", command_id)
        ended = entries_for(log, "bolus_delivered", command_id)
        if settled.outcome is Outcome.DELIVERED:
            assert settled.delivered == PULSES_PER_UNIT, run.trigger
            assert len(started) == 1, run.trigger  # never twice (S7)
            assert [e["pulses"] for e in ended] == [PULSES_PER_UNIT]
        else:
            assert settled.outcome is Outcome.UNKNOWN, (run.trigger, settled)
            assert settled.delivered == 0
            assert started == []
            assert ended == []
        total += settled.delivered
    # Once the pump shows the bolus, it was committed: the truth is "delivered".
    by_trigger = {run.trigger: run for run in killed_boluses.runs}
    shown = by_trigger["pump started"]
    assert shown.settled[shown.pending_after_kill[0]].outcome is Outcome.DELIVERED

    final = killed_boluses.final_status
    # The pump delivered exactly what the journal says, plus the final 0.5 U.
    assert final["bolus_pulses_delivered"] == total + 10
    motor_matches_ledger(final)
    assert len([e for e in log if e["event"] == "bolus_started"]) == total // 20 + 1


#: How pumpctl names a settled bolus's outcome on stderr.
SHOWN_OUTCOME = {Outcome.DELIVERED: "delivered", Outcome.UNKNOWN: "not delivered"}


def test_rerun_after_kill_reports_the_settled_outcome(killed_boluses: KillResults) -> None:
    """Regression: pumpctl settled an interrupted bolus silently; the user was never told
    its outcome (host/cli.py _connected discarded what settle_pending learned)."""
    # OutcomeUnknown tells the user: "run 'pumpctl status' when the link is back to
    # settle it - do not bolus again".  The run that settles it must then say what
    # became of that bolus, naming it as the exit-4 message did -- on stderr, so
    # that its --json stdout stays machine-readable.
    for run in killed_boluses.runs:
        [command_id] = run.pending_after_kill
        settled = run.settled[command_id]
        line = (
            f"pumpctl: earlier bolus {command_id.hex()[:8]} settled: "
            f"{SHOWN_OUTCOME[settled.outcome]}, "
            f"{pulses_to_units(settled.delivered)} U of 1 U"
        )
        assert line in run.settler.stderr.splitlines(), (run.trigger, run.settler.stderr)
        for output in run.settler.stdout.splitlines():  # one JSON object a line
            json.loads(output)
        if run.follow is not None:  # the status run that did not settle it said nothing
            assert "settled" not in run.status.stderr, run.status.stderr


# --- a dead link ------------------------------------------------------------


def test_dead_link_is_one_line_and_changes_nothing(
    cable: tuple[str, str], start_pump: StartPump, tmp_path: Path
) -> None:
    port = cable[1]
    keys = tmp_path / "keys"
    sim = start_pump("--auto-confirm", "--remote-bolus")
    pair(port, keys)
    sim.stop()  # the cable stays; nobody answers on it

    before = snapshot(keys)
    result = ctl(port, keys, "status")
    assert result.returncode == 2
    assert "does not answer" in one_error_line(result.stderr)
    assert snapshot(keys) == before


@pytest.mark.slow
def test_another_pump_on_the_cable_is_refused_cleanly(
    cable: tuple[str, str], start_pump: StartPump, tmp_path: Path
) -> None:
    """Slow (4 s of handshake timeouts): keys for one pump, another pump on the line."""
    port = cable[1]
    keys = tmp_path / "keys"
    pair_sim = start_pump("--auto-confirm", "--remote-bolus")
    pair(port, keys)
    pair_sim.stop()
    stranger = start_pump("--remote-bolus", state=tmp_path / "other-pump")
    before = snapshot(keys)
    result = ctl(port, keys, "status")
    assert result.returncode == 2
    assert "not paired with it" in one_error_line(result.stderr)
    assert snapshot(keys) == before
    stranger.stop()
    assert sim_status(tmp_path / "other-pump")["paired_remotes"] == 0


@pytest.mark.slow
def test_bolus_into_a_dead_link_journals_nothing_and_delivers_nothing(
    cable: tuple[str, str], start_pump: StartPump, tmp_path: Path
) -> None:
    """Slow (about 6 s of handshake timeouts); the fast, exact variant is in
    test_inprocess_e2e.py on the rig's DirectLink."""
    port = cable[1]
    keys = tmp_path / "keys"
    sim = start_pump("--auto-confirm", "--remote-bolus")
    pair(port, keys)
    sim.stop()

    before = snapshot(keys)
    result = ctl(port, keys, "bolus", "1")
    # No handshake completed, so nothing was sent: the bolus fails before it is
    # journaled (exit 2, keys directory untouched), not "unknown" (exit 4).
    assert result.returncode == 2, result.stderr
    assert "does not answer" in one_error_line(result.stderr)
    assert snapshot(keys) == before

    # The pump comes back: there is nothing to settle, and it delivered nothing.
    sim = start_pump("--remote-bolus")
    result = ctl(port, keys, "--json", "status")
    assert result.returncode == 0, result.stderr
    assert "settled" not in result.stderr
    assert journal_state(keys)[0] == []
    sim.stop()
    final = sim_status(sim.state)
    assert final["bolus_pulses_delivered"] == 0
    motor_matches_ledger(final)


def test_a_second_pumpctl_on_the_same_port_fails_cleanly(
    cable: tuple[str, str], start_pump: StartPump, tmp_path: Path
) -> None:
    """The port is exclusive: a second remote gets one line and status 2, not half the bytes."""
    port = cable[1]
    keys = tmp_path / "keys"
    sim = start_pump("--auto-confirm", "--remote-bolus")
    pair(port, keys)
    first = subprocess.Popen(  # noqa: S603 -- our own tool, fixed arguments
        [*command("pumpctl"), "--port", port, "--keys", str(keys), "bolus", "5"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    try:
        sim.out.wait_for("REMOTE BOLUS 5 U started")  # 4 s of delivery from here
        with ThreadPoolExecutor(2) as pool:
            other = pool.submit(ctl, port, tmp_path / "other", "status")
            same = pool.submit(ctl, port, keys, "status")
            second, same_keys = other.result(), same.result()
        still_running = first.poll() is None
        out, err = first.communicate(timeout=STEP_TIMEOUT_S)
    finally:
        with contextlib.suppress(ProcessLookupError):
            first.kill()
        first.wait()
    assert still_running, "the bolus ended before the second pumpctl ran: inconclusive"
    assert first.returncode == 0, err
    assert "bolus delivered: 5 U of 5 U" in out
    assert second.returncode == 2
    assert "cannot open port" in one_error_line(second.stderr)
    assert same_keys.returncode == 2
    assert "in use by another pumpctl" in one_error_line(same_keys.stderr)
    sim.stop()
    assert sim_status(sim.state)["bolus_pulses_delivered"] == 5 * PULSES_PER_UNIT


def test_cancel_after_a_killed_bolus_stops_it(
    cable: tuple[str, str], start_pump: StartPump, tmp_path: Path
) -> None:
    """The remote dies mid-bolus; the user runs ``pumpctl cancel`` (S10: it can be cancelled).

    Regression: 'pumpctl cancel' first settled the journal, and settle_pending followed a
    bolus in progress to its end, so cancel waited for the whole bolus and then said there
    was nothing to cancel.
    """
    port = cable[1]
    keys = tmp_path / "keys"
    sim = start_pump("--auto-confirm", "--remote-bolus")
    pair(port, keys)
    child = subprocess.Popen(  # noqa: S603 -- our own tool, fixed arguments
        [*command("pumpctl"), "--port", port, "--keys", str(keys), "bolus", "3"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=ENV,
    )
    try:
        sim.out.wait_for("REMOTE BOLUS 3 U started")
    finally:
        child.kill()
        child.wait()
    [command_id] = journal_state(keys)[0]
    result = ctl(port, keys, "cancel")
    after = ctl(port, keys, "status")  # settles the cancelled bolus in the journal
    sim.stop()
    delivered = sim_status(sim.state)["bolus_pulses_delivered"]
    assert result.returncode == 0, result.stderr
    assert "bolus cancelled after" in result.stdout
    assert delivered < 3 * PULSES_PER_UNIT
    # The journal learns the truth: cancelled, after exactly what the pump delivered.
    assert after.returncode == 0, after.stderr
    pending, settled = journal_state(keys)
    assert pending == []
    [outcome] = [c for c in settled if c.command_id == command_id]
    assert (outcome.outcome, outcome.delivered) == (Outcome.CANCELLED, delivered)
    assert (
        f"pumpctl: earlier bolus {command_id.hex()[:8]} settled: cancelled, "
        f"{pulses_to_units(delivered)} U of 3 U"
    ) in (result.stderr + after.stderr).splitlines()


def test_json_pair_prints_only_json_on_stdout(
    cable: tuple[str, str], start_pump: StartPump, tmp_path: Path
) -> None:
    """Regression: 'pumpctl --json pair' printed three human lines on stdout before its
    JSON object, so its output was not machine-readable."""
    start_pump("--auto-confirm")
    result = ctl(cable[1], tmp_path / "keys", "--json", "pair", "--auto-confirm")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
    for line in result.stdout.splitlines():
        json.loads(line)
    # The human lines went to stderr instead.
    assert "pairing code:" in result.stderr


# --- link loss: the therapy loop outlives its link ([fail-safe] 8) ---------


class PumpSocket:
    """The pump's end of the cable behind one fixed path, as udev's
    ``/dev/serial/by-id/...`` names a USB adapter: :meth:`unplug` pulls the
    cable (the pump's pty hangs up and its node vanishes), :meth:`plug` puts
    a new one in and points the path at it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._modem: VirtualNullModem | None = None

    def plug(self) -> str:
        """A new virtual null-modem cable (the old one pulled); returns the remote's end."""
        self.unplug()
        pump_end, remote_end, modem = create_vnull()
        self._modem = modem
        self._point_at(pump_end)
        return remote_end

    def _point_at(self, device: str) -> None:
        temporary = self.path.with_name(self.path.name + ".new")
        temporary.unlink(missing_ok=True)
        temporary.symlink_to(device)
        temporary.replace(self.path)

    def unplug(self) -> None:
        if self._modem is not None:
            self._modem.close()
            self._modem = None


@pytest.fixture
def socket(tmp_path: Path) -> Iterator[PumpSocket]:
    plug = PumpSocket(tmp_path / "pump-port")
    try:
        yield plug
    finally:
        plug.unplug()


def wait_for_link(
    sim: PumpSim, what: str, check: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """Poll ``pumpsim status --json`` until ``check`` holds; fail at once if pumpsim died."""
    deadline = time.monotonic() + STEP_TIMEOUT_S
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        assert sim.proc.poll() is None, f"pumpsim exited {sim.proc.returncode}:\n{sim.err.text}"
        status = sim_status(sim.state)
        if "link" in status and check(status):
            return status
        time.sleep(0.1)
    raise AssertionError(f"never saw {what}; last status: {status}\n{sim.err.text}")


def basal_moves(sim: PumpSim, since: dict[str, Any]) -> dict[str, Any]:
    """Wait for the motor's own count to pass ``since`` (one basal pulse is 3.6 s at 50x)."""
    return wait_for_link(
        sim, "a basal pulse", lambda status: status["motor_pulses"] > since["motor_pulses"]
    )


def test_fail_safe_8_pumpsim_outlives_its_cable_pulled_and_plugged_back(
    socket: PumpSocket, start_pump: StartPump, tmp_path: Path
) -> None:
    """[fail-safe] 8: pulling the cable (``pumpctl link vnull`` stopped) made pumpsim
    exit within 0.2 s ("device reports readiness to read but returned no data")."""
    keys = tmp_path / "keys"
    remote = socket.plug()
    sim = start_pump("--auto-confirm", "--remote-bolus", port=str(socket.path))
    pair(remote, keys)
    before = sim_status(sim.state)
    assert before["link"]["state"] == "up"
    assert before["loop"]["running"] is True

    socket.unplug()
    down = wait_for_link(sim, "the link down", lambda s: s["link"]["state"] == "down")
    assert down["link"]["hangups"] == 1
    # Therapy does not need the link: basal pulses go on while the cable is out.
    basal_moves(sim, since=down)
    assert sim.proc.poll() is None

    remote = socket.plug()
    back = wait_for_link(sim, "the link back", lambda s: s["link"]["reopens"] == 1)
    assert back["link"]["state"] == "up"
    assert back["link"]["hangups"] == 1
    result = ctl(remote, keys, "--json", "status")
    assert result.returncode == 0, result.stderr
    [status] = json_lines(result.stdout)
    assert status["basal_units_delivered"] > 0

    sim.stop()
    final = sim_status(sim.state)
    motor_matches_ledger(final)
    assert final["motor_pulses"] > down["motor_pulses"]
    assert final["link"]["state"] == "closed"
    assert final["loop"] == {**final["loop"], "running": False, "storage_faults": 0}
    # One line per event on stderr, nothing more (and no secret: S12).
    events = [line for line in sim.err.lines if "link" in line]
    assert len(events) == 2, sim.err.text
    assert "therapy continues" in events[0]
    assert "is back" in events[1]


def _send(fd: int, data: bytes) -> None:
    """Write all of ``data`` to a non-blocking pty master, failing instead of hanging."""
    view = memoryview(data)
    deadline = time.monotonic() + STEP_TIMEOUT_S
    while view:
        assert time.monotonic() < deadline, "the pump stopped reading its port"
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            time.sleep(0.01)


def _records(fd: int, decoder: FrameDecoder, wanted: Callable[[bytes], bool]) -> bytes:
    """Read ``fd`` until a record ``wanted`` accepts arrives; skip everything else."""
    deadline = time.monotonic() + STEP_TIMEOUT_S
    while time.monotonic() < deadline:
        while True:
            try:
                record = decoder.next_record()
            except ProtocolError:
                continue
            if record is None:
                break
            if wanted(record):
                return record
        try:
            decoder.receive_data(os.read(fd, 65536))
        except BlockingIOError:
            time.sleep(0.01)
    raise AssertionError("the pump never answered")


def _connect(fd: int, keys: Path, decoder: FrameDecoder) -> SecureSession:
    """A handshake over the raw pty with the remote's keys, as ``pumpctl`` would (SPEC §6)."""
    store = KeyStore.open(keys)
    pairing = store.pairing()
    assert pairing is not None
    static = store.remote_static()
    peer = paired_peer(static, pairing.pump_static, local_is_remote=True)
    initiator = HandshakeInitiator(local_static=static, peer=peer, random_bytes=os.urandom)
    _send(fd, encode_frame(initiator.start()))
    reply = _records(fd, decoder, lambda r: r[:1] == bytes((RecordType.HANDSHAKE_RESP,)))
    return SecureSession(initiator.finish(reply), established_at=time.monotonic())


def test_fail_safe_8_a_remote_that_stops_reading_is_counted_not_fatal(
    cable: tuple[str, str], start_pump: StartPump, tmp_path: Path
) -> None:
    """[fail-safe] 8: a peer that stopped reading while replies were due made pumpsim
    exit after about 2 s ("Write timeout")."""
    keys = tmp_path / "keys"
    sim = start_pump("--auto-confirm", "--remote-bolus")
    pair(cable[1], keys)
    # The remote's end of the cable, opened as a program that reads when it likes.
    remote = os.open(cable[1], os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        _flood_without_reading(sim, remote, keys)
    finally:
        os.close(remote)
    sim.stop()
    motor_matches_ledger(sim_status(sim.state))


def _flood_without_reading(sim: PumpSim, master: int, keys: Path) -> None:
    # A paired remote asks for its status over and over and never reads a reply:
    # the cable's relay and both ptys fill up (about 100 KiB), then the pump's port.
    decoder = FrameDecoder()
    session = _connect(master, keys, decoder)
    request_id = 0
    stalled: dict[str, Any] = {}
    for _batch in range(40):
        flood = b""
        for _ in range(100):
            request_id += 1
            flood += encode_frame(session.seal(encode_message(StatusRequest(request_id))))
        _send(master, flood)
        stalled = sim_status(sim.state)
        if stalled.get("link", {}).get("write_timeouts", 0) >= 1:
            break
    stalled = wait_for_link(sim, "a write timeout", lambda s: s["link"]["write_timeouts"] >= 1)
    link = stalled["link"]
    assert link["state"] == "stalled"
    assert link["hangups"] == 0
    # Bounded: the pump holds at most its transmit buffer; the rest is dropped.
    assert link["pending_bytes"] <= MAX_PENDING_OUTPUT
    assert link["dropped_bytes"] > 0
    # Basal is delivered while the remote is stuck.
    basal_moves(sim, since=stalled)

    # The remote reads again: the link recovers, and a new exchange works (S9).
    while True:
        try:
            if not os.read(master, 65536):
                break
        except BlockingIOError:
            break
    decoder = FrameDecoder()
    session = _connect(master, keys, decoder)
    request_id += 1
    _send(master, encode_frame(session.seal(encode_message(StatusRequest(request_id)))))

    def is_reply(record: bytes) -> bool:
        if record[:1] != bytes((RecordType.DATA,)):
            return False
        try:
            reply = decode_message(session.open(record))
        except ProtocolError:
            return False
        return isinstance(reply, Status) and reply.request_id == request_id

    _records(master, decoder, is_reply)
    flowing = wait_for_link(sim, "output flowing", lambda s: s["link"]["state"] == "up")
    assert flowing["link"]["write_timeouts"] >= 1
