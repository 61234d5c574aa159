"""The systemd unit example (config/dynamostore@.service) passes `systemd-analyze verify`."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "config" / "dynamostore@.service"
INSTALLED = "/opt/dynamostore/venv/bin/dynamostore"


def test_the_systemd_unit_verifies(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian: apt-get install systemd)")
    text = UNIT.read_text()
    assert INSTALLED in text and "--id %i" in text
    # verify checks that ExecStart is executable: point it at this checkout's command
    here = Path(sys.executable).with_name("dynamostore")
    if not here.exists():
        pytest.skip(f"no dynamostore command next to {sys.executable}")
    (tmp_path / UNIT.name).write_text(text.replace(INSTALLED, str(here)))
    proc = subprocess.run([analyze, "verify", "dynamostore@n1.service"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    ours = [line for line in (proc.stdout + proc.stderr).splitlines() if "dynamostore@" in line]
    assert proc.returncode == 0 and not ours, proc.stdout + proc.stderr
