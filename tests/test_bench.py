"""Every bench script at least starts: its imports resolve and it parses its flags (the runs themselves take
minutes and measure speed, so they live outside the test suite)."""
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = sorted((Path(__file__).resolve().parents[1] / "bench").glob("*.py"))


@pytest.mark.parametrize("script", BENCH, ids=[path.name for path in BENCH])
def test_bench_script_starts(script):
    run = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "usage:" in run.stdout
