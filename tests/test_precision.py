"""The precision a model loads in (osum_min/model/precision.py), loading that streams into it (weights.load_weights
with quantize.quantize_int8), and each precision decoding a batch as each item alone."""

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import infer
from conftest import FIXTURE_A
from osum_min.model import precision
from osum_min.model.osum import OSUM, OSUM_PRESETS, load_for_inference
from osum_min.model.precision import GIB, PrecisionError, choose_precision, weight_bytes
from osum_min.model.quantize import Int8Linear

ROOT = Path(__file__).resolve().parents[1]


def released() -> OSUM:
    with torch.device("meta"):
        return OSUM(OSUM_PRESETS["osum"])


def test_the_released_model_s_bytes_per_precision():
    """7.99 B parameters (LLM 7.63 B with LoRA, encoder 306 M, adaptor 52 M): float32 ~29.8 GiB, bf16 half,
    int8 a byte per LLM linear weight with bf16 elsewhere ~8.4 GiB."""
    model = released()
    params = sum(p.numel() for p in model.parameters())
    assert 7.9e9 < params < 8.1e9
    buffers = 2**26  # the encoder's positional table and such
    assert 4 * params < weight_bytes(model, torch.float32, None) < 4 * params + buffers
    assert 2 * params < weight_bytes(model, torch.bfloat16, None) < 2 * params + buffers
    int8 = weight_bytes(model, torch.bfloat16, "int8")
    assert 8.0 * GIB < int8 < 8.8 * GIB


@pytest.mark.parametrize(
    "available_gib, expected",
    [(40, "float32"), (24, "bf16"), (16, "int8+float32"), (10, "int8+bf16")],
)
def test_the_best_that_fits_is_chosen_and_said(available_gib, expected):
    said = []
    chosen = choose_precision(
        released(), "cpu", available=available_gib * GIB, say=said.append
    )
    assert chosen.name == expected
    assert len(said) == 1 and said[0].startswith(
        f"precision: {expected} (the best that fits: "
    )
    assert f"{available_gib}.0 GiB available on cpu" in said[0]


def test_overrides_narrow_the_choice():
    model, said = released(), []
    assert (
        choose_precision(
            model, "cpu", torch.bfloat16, available=40 * GIB, say=said.append
        ).name
        == "bf16"
    )
    assert choose_precision(
        model, "cpu", quantize="int8", available=40 * GIB, say=said.append
    ).name == ("int8+float32")
    assert "as asked" in said[-1]
    with pytest.raises(
        PrecisionError, match=r"needs 29\.8 GiB in float32 .*, 24\.0 GiB available"
    ):
        choose_precision(
            model, "cpu", torch.float32, available=24 * GIB, say=said.append
        )


def test_nothing_fits_is_one_line_before_loading():
    with pytest.raises(PrecisionError) as refused:
        choose_precision(released(), "cpu", available=6 * GIB, say=print)
    line = str(refused.value)
    assert "\n" not in line
    assert (
        "needs 8." in line
        and "in int8+bf16" in line
        and "6.0 GiB available on cpu" in line
    )


def test_gpu_candidates_are_bf16_then_int8():
    chosen = choose_precision(
        released(), "cuda", available=12 * GIB, say=lambda line: None
    )
    assert chosen.name == "int8+bf16"


@pytest.mark.parametrize(
    "available, code, said",
    [
        (2**20, 2, "0.0 GiB available on cpu: not loading it"),
        (64 * GIB, 0, "precision: float32 ("),
    ],
)
def test_infer_says_its_choice_or_refuses_in_one_line(
    fixture_weights, capsys, monkeypatch, available, code, said
):
    monkeypatch.setattr(precision, "available_bytes", lambda device: available)
    # said even for the fixture's model
    monkeypatch.setattr(precision, "SAID_FROM_BYTES", 0)
    audio, weights = str(FIXTURE_A / "audio.wav"), str(fixture_weights)
    flags = ["--prompt-ids", "1", "--ids", "--max-new-tokens", "2"]
    assert infer.main([audio, "--weights", weights, *flags]) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and said in err[0]


@pytest.mark.parametrize("mode", ["float32", "bf16", "int8"])
def test_a_batch_decodes_as_each_item_alone(fixture_weights, expected, mode):
    dtype, quantize = (
        (torch.bfloat16, None)
        if mode == "bf16"
        else (torch.float32, mode if mode == "int8" else None)
    )
    model = load_for_inference(fixture_weights, None, "cpu", dtype, quantize=quantize)
    assert any(isinstance(m, Int8Linear) for m in model.modules()) == (mode == "int8")
    feats = expected["feats"]
    mel = torch.stack([feats, feats.flip(0) * 0.5])  # two different clips, same length
    lens = torch.tensor([feats.shape[0], feats.shape[0] - 40])
    prompts = [[17, 230, 511], [42, 901, 7, 333, 5]]
    settings = dict(
        num_beams=2, repetition_penalty=1.05, max_new_tokens=8, eos_token_id=None
    )
    batch = model.generate(mel, lens, prompts, **settings)
    alone = [
        model.generate(mel[i : i + 1], lens[i : i + 1], [prompts[i]], **settings)[0]
        for i in range(2)
    ]
    assert batch == alone


LOAD_PEAK = """
import json, sys, threading, time
from pathlib import Path
import torch
from osum_min.model.osum import OSUM
from osum_min.model.precision import weight_bytes

def anon():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024

peak, done = [0], threading.Event()
def sample():
    while not done.is_set():
        peak[0] = max(peak[0], anon())
        time.sleep(0.002)

directory, dtype, quantize = sys.argv[1], getattr(torch, sys.argv[2]), sys.argv[3] or None
final = weight_bytes(OSUM.skeleton(directory), dtype, quantize)
base = anon()
threading.Thread(target=sample, daemon=True).start()
model = OSUM.from_pretrained(directory, device="cpu", dtype=dtype, quantize=quantize)
done.set()
print(json.dumps({"final": final, "extra": max(peak[0], anon()) - base}))
"""


@pytest.fixture(scope="module")
def half_billion(tmp_path_factory) -> Path:
    """A random OSUM with Qwen2.5-0.5B's LLM (LoRA r 8; 494 M parameters, tied embeddings) and a small encoder,
    bf16, written tensor by tensor as bench/cpu_7b.py writes the released one."""
    sys.path.insert(0, str(ROOT / "bench"))
    from cpu_7b import write_checkpoint

    directory = tmp_path_factory.mktemp("half_billion")
    small_encoder = OSUM_PRESETS["small"]
    config = replace(
        OSUM_PRESETS["osum-qwen2.5-0.5b"],
        encoder=small_encoder.encoder,
        adaptor=replace(small_encoder.adaptor, llm_dim=896),
    )
    write_checkpoint(directory, config)
    return directory


@pytest.mark.parametrize("dtype, quantize", [("bfloat16", "int8"), ("bfloat16", "")])
def test_loading_streams_into_the_final_form(half_billion, dtype, quantize):
    """Peak anonymous memory while loading, above what the process held before: the final model plus one
    stored tensor and its int8 form (the largest: the 136 M-entry embedding, read again for the tied lm_head)
    with 100 MiB to spare. Loading the float model and quantising it after would need 2x the bf16 model."""
    done = subprocess.run(
        [sys.executable, "-c", LOAD_PEAK, str(half_billion), dtype, quantize],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(done.stdout.splitlines()[-1])
    largest = 151936 * 896 * 2  # bf16 embedding
    assert figures["extra"] <= figures["final"] + 1.5 * largest + 100 * 2**20, figures
