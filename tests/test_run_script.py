"""tests/run.sh: the two pytest processes of the whole suite die with the script, even when it is SIGKILLed."""

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.system.runs import alive

RUN_SH = Path(__file__).with_name("run.sh")


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs util-linux's setpriv")
def test_a_sigkilled_runner_takes_both_pytest_processes_with_it(tmp_path):
    (tmp_path / "tests").mkdir()
    shutil.copy(RUN_SH, tmp_path / "tests" / "run.sh")
    fake = tmp_path / ".venv" / "bin" / "python"  # stands in for pytest: says its pid, then waits
    fake.parent.mkdir(parents=True)
    fake.write_text(f'#!/bin/sh\necho $$ >> {tmp_path}/pids\nexec sleep 120\n')
    fake.chmod(0o755)
    runner = subprocess.Popen(["bash", str(tmp_path / "tests" / "run.sh")], env={**os.environ, "DYNARAY_NETNS": "1"},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pids_file = tmp_path / "pids"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(pids_file.read_text().split() if pids_file.exists() else []) < 2:
        time.sleep(0.05)
    pids = [int(p) for p in pids_file.read_text().split()]
    assert len(pids) == 2, f"expected the two pytest processes to start, got pids {pids}"
    runner.send_signal(signal.SIGKILL)
    runner.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.05)
    left = [p for p in pids if alive(p)]
    for p in left:
        os.kill(p, signal.SIGKILL)
    assert not left, f"pytest processes {left} outlived the SIGKILLed tests/run.sh"
