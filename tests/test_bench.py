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
    run = subprocess.run(
        [sys.executable, str(script), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "usage:" in run.stdout


def test_gpu_check_smoke_runs_every_section_without_soundfile():
    """bench/gpu.py, the unattended device check, runs the same code on the CPU at tiny sizes: every section gives
    its figures (no `*_error` key), and its import chain (with bench/train_memory.py and quantize.py, which it calls)
    does without soundfile, which the GPU image may lack."""
    bench = BENCH[0].parent
    imports = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, gpu, train_memory, osum_min.model.quantize; "
            "print('soundfile' in sys.modules)",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=bench,
    )
    assert imports.stdout.strip() == "False", imports.stderr[-2000:]
    run = subprocess.run(
        [sys.executable, str(bench / "gpu.py"), "--smoke"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    figures = json.loads(run.stdout.strip().splitlines()[-1])
    assert not [key for key in figures if key.endswith("_error")], figures
    llm = figures["llm_batch1"]
    assert all(
        llm[f"{who}_{how}_tok_s"] > 0
        for who in ("hf", "ours_eager", "ours_compiled")
        for how in ("greedy", "beam4")
    ), llm
    assert (
        figures["osum"]["batch1_s_per_file"] > 0
        and figures["osum"]["batch8_files_per_s"] > 0
    )
    assert (
        figures["inference_batch1"]["int8_e2e_tok_s"] > 0
        and figures["inference_batch1"]["bf16_e2e_tok_s"] > 0
    )
    names = [
        "released_fp32_frozen",
        "released_bf16_frozen",
        "released_bf16_frozen_ckpt",
        "link_and_lora_bf16_frozen",
        "link_and_lora_bf16_frozen_ckpt",
    ]
    training = figures["training"]
    assert all(
        training[f"{name}_step_s"] > 0 and training[f"{name}_peak_gib"] > 0
        for name in names
    ), training


def test_serve_smoke_measures_concurrency_with_answers_equal_to_alone():
    """bench/serve.py --smoke: a tiny model served on 127.0.0.1, one request at a time and 2 and 4 concurrent
    clients; every concurrent answer equals its one-at-a-time answer, and the figures are there."""
    pytest.importorskip("fastapi", reason="bench/serve.py needs the [serve] extra")
    pytest.importorskip("httpx", reason="bench/serve.py's clients use httpx")
    run = subprocess.run(
        [sys.executable, str(BENCH[0].parent / "serve.py"), "--smoke"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    figures = json.loads(run.stdout.strip().splitlines()[-1])
    assert (
        figures["c2_identical_to_alone"]
        == figures["c4_identical_to_alone"]
        == figures["requests"]
    )
    assert (
        figures["c4_over_alone_throughput"] > 0
        and figures["stream_first_token_c2_p50_s"] > 0
    )
