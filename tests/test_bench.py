"""Every bench script at least starts: its imports resolve and it parses its flags (the runs themselves take
minutes and measure speed, so they live outside the test suite)."""
import json
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


def test_train_memory_smoke_runs_without_soundfile():
    """bench/gpu.py calls bench/train_memory.py's train_figures: its imports must not pull in soundfile, and the
    tiny-size run prints one JSON line with every configuration's step time and peak memory."""
    bench = BENCH[0].parent
    imports = subprocess.run([sys.executable, "-c", "import sys, train_memory; print('soundfile' in sys.modules)"],
                             capture_output=True, text=True, timeout=120, cwd=bench)
    assert imports.stdout.strip() == "False", imports.stderr[-2000:]
    run = subprocess.run([sys.executable, str(bench / "train_memory.py"), "--smoke"], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    figures = json.loads(run.stdout.strip().splitlines()[-1])
    names = ["released_fp32_frozen", "released_bf16_frozen", "released_bf16_frozen_ckpt", "link_and_lora_bf16_frozen",
             "link_and_lora_bf16_frozen_ckpt"]
    assert all(figures[f"{name}_step_s"] > 0 and figures[f"{name}_peak_gib"] > 0 for name in names), figures
