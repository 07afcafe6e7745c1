"""The bad-input corpus for conversion and weight directories: each case gets one clear line, never a traceback,
a half-written model or a silently wrong one. (tests/test_bad_inputs.py holds inference's.)"""

import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from safetensors.torch import load_file, save_file

import convert
import infer
from conftest import FIXTURE_A, FIXTURES, ROOT
from osum_min import weights
from osum_min.files import FileError
from osum_min.model.osum import OSUM, OSUM_PRESETS, OSUMConfig
from osum_min.convert.original import (
    RELEASED_CONFIG,
    config_from_original,
    original_config,
)
from osum_min.text.tokenizer import AddedToken, Tokenizer
from osum_min.weights import (
    WeightsError,
    replacing_directory,
    save_weights,
    weight_files,
)

CONFIG_A = FIXTURE_A / "osum_config.json"
GREEDY = [
    "--prompt-ids",
    "17,230,511,42,901,7,333",
    "--ids",
    "--beams",
    "1",
    "--max-new-tokens",
    "4",
]


def run_convert(capsys, *argv) -> tuple[int, str, str]:
    code = convert.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out.strip(), err.strip()


def run_infer(capsys, *argv) -> tuple[int, str, str]:
    code = infer.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out.strip(), err.strip()


def one_line(err: str) -> bool:
    return len(err.splitlines()) == 1 and "Traceback" not in err


def digest(directory: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.iterdir())
    }


def byte_tokenizer(eod: int, pairs: int = 0) -> Tokenizer:
    """The 256 single bytes, the first `pairs` pairs of letters, and <|endoftext|> at `eod` (ids between: none)."""
    letters = b"abcdefghijklmnopqrstuvwxyz "
    merged = [bytes([x, y]) for x in letters for y in letters][:pairs]
    ranks = {
        **{bytes([b]): b for b in range(256)},
        **{pair: 256 + i for i, pair in enumerate(merged)},
    }
    return Tokenizer(ranks, [AddedToken("<|endoftext|>", eod, True)])


# --- issue 17.1: the original's checkpoint lives in the package ---------------------------------------------------


def test_no_package_module_imports_a_root_script_or_reads_tests():
    for path in (ROOT / "osum_min").rglob("*.py"):
        source = path.read_text()
        assert not re.search(
            r"^\s*(import|from)\s+(convert|infer|train)\b", source, re.M
        ), path.name
        assert not re.search(r"[\"'/]tests[\"'/]", source), path.name


def test_export_runs_with_only_the_package(fixture_weights, tmp_path):
    """The package alone (no repository root on sys.path) exports, and the released config ships inside it."""
    shutil.copytree(ROOT / "osum_min", tmp_path / "site" / "osum_min")
    script = (
        "import sys; from osum_min.convert.export import export_original; from osum_min.convert.original import "
        "RELEASED_CONFIG, read_original_config; print(export_original(sys.argv[1], sys.argv[2])); "
        "print(read_original_config(RELEASED_CONFIG).llm.vocab_size)"
    )
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            str(fixture_weights),
            str(tmp_path / "infer.pt"),
        ],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tmp_path / "site")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(tmp_path / "infer.pt"), "152064"]
    assert json.loads(RELEASED_CONFIG.read_text()) == json.loads(
        (FIXTURES / "released_config.json").read_text()
    )
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"][
        "setuptools"
    ]["package-data"]
    shipped = {name for names in package_data.values() for name in names}
    # installed with the package
    assert {
        "released_config.json",
        "published.json",
    } <= shipped


# every preset but osum-mini, whose adaptor keeps 25 embeddings a second (strides (1, 2))
ORIGINAL_SHAPED = sorted(set(OSUM_PRESETS) - {"mini"})


@pytest.mark.parametrize("preset", ORIGINAL_SHAPED)
def test_original_config_round_trips_every_preset(preset):
    config = OSUM_PRESETS[preset]
    back = config_from_original(json.loads(json.dumps(original_config(config))))
    assert back == replace(config, name="osum")  # the original's config names no model


def test_a_model_the_original_cannot_build_is_not_exported(tmp_path, capsys):
    """osum-mini's adaptor has two convolutions where the original's has three: exporting it
    would write a checkpoint the original cannot load, so it is one line, and nothing written."""
    tiny = OSUM_PRESETS["tiny"]
    config = replace(tiny, adaptor=replace(tiny.adaptor, strides=(1, 2)))
    with pytest.raises(ValueError, match=r"strides \(1, 2, 2\), this model's \(1, 2\)"):
        original_config(config)
    model_dir = tmp_path / "model"
    OSUM(config).save_pretrained(model_dir)
    out = tmp_path / "infer.pt"
    code = convert.main(["--to-original", str(model_dir), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code != 0 and len(err.splitlines()) == 1, err
    assert str(model_dir) in err and "not exportable" in err
    assert not out.exists()


# --- issue 16.3: a conversion is replaced as a set; a directory whose files disagree is refused -------------------


@pytest.fixture
def sharded(monkeypatch):
    """convert.py writing shards of at most 1 MB (fixture_a is 10 MB), as the released model's 15 GB are."""
    monkeypatch.setattr(
        convert, "save_weights", functools.partial(save_weights, max_shard_bytes=2**20)
    )


def test_an_interrupted_reconversion_leaves_the_old_model(
    sharded, monkeypatch, tmp_path, capsys
):
    out = tmp_path / "osum"
    assert (
        run_convert(capsys, FIXTURE_A / "infer.pt", "--config", CONFIG_A, "--out", out)[
            0
        ]
        == 0
    )
    assert len(weight_files(out)) > 3
    before = digest(out)
    real_entries = convert.convert_entries

    def interrupted_entries(source, config, dtype):
        entries = real_entries(source, config, dtype)

        def interrupt():
            raise KeyboardInterrupt

        half = len(entries) // 2
        return (
            entries[:half]
            + [(entries[half][0], entries[half][1], entries[half][2], interrupt)]
            + entries[half + 1 :]
        )

    monkeypatch.setattr(convert, "convert_entries", interrupted_entries)
    with pytest.raises(KeyboardInterrupt):
        convert.main(
            [
                str(FIXTURE_A / "infer.pt"),
                "--config",
                str(CONFIG_A),
                "--dtype",
                "bf16",
                "--out",
                str(out),
            ]
        )
    assert digest(out) == before and sorted(p.name for p in tmp_path.iterdir()) == [
        "osum"
    ]
    assert OSUM.from_pretrained(out, device="cpu").speech_bos_eos.dtype == torch.float32


def test_a_single_file_reconversion_replaces_a_sharded_one(
    sharded, monkeypatch, tmp_path, capsys
):
    out = tmp_path / "osum"
    assert (
        run_convert(
            capsys,
            FIXTURE_A / "infer.pt",
            "--config",
            CONFIG_A,
            "--dtype",
            "bf16",
            "--out",
            out,
        )[0]
        == 0
    )
    monkeypatch.setattr(convert, "save_weights", save_weights)
    assert (
        run_convert(capsys, FIXTURE_A / "infer.pt", "--config", CONFIG_A, "--out", out)[
            0
        ]
        == 0
    )
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    assert OSUM.from_pretrained(out, device="cpu").speech_bos_eos.dtype == torch.float32


def test_conversion_refuses_to_replace_a_folder_with_other_files(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    code, _, err = run_convert(
        capsys, FIXTURE_A / "infer.pt", "--config", CONFIG_A, "--out", tmp_path
    )
    assert (
        code == 2
        and one_line(err)
        and "notes.txt" in err
        and (tmp_path / "notes.txt").is_file()
    )


def a_dead_process_id() -> int:
    pid = 4_000_000
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            pass
        pid += 1


def test_a_conversion_killed_between_the_renames_is_put_right_by_the_next(
    fixture_weights, tmp_path
):
    """kill -9 leaves `.osum.old-PID` (the old model) and `.osum.new-PID` (maybe partial), and no `osum`."""
    pid = a_dead_process_id()
    shutil.copytree(fixture_weights, tmp_path / f".osum.old-{pid}")
    (tmp_path / f".osum.new-{pid}").mkdir()
    (tmp_path / f".osum.new-{pid}" / "model.safetensors.tmp").write_bytes(b"partial")
    with pytest.raises(RuntimeError), replacing_directory(tmp_path / "osum"):
        raise RuntimeError("this conversion fails too")
    assert [p.name for p in tmp_path.iterdir()] == ["osum"] and digest(
        tmp_path / "osum"
    ) == digest(fixture_weights)


def mixed_directories(root: Path, source: Path) -> dict[str, Path]:
    """Directories holding the files of two writes, each as a stale conversion would leave them."""
    cases = {}
    for case in (
        "index beside single file",
        "shard not in index",
        "index names missing shard",
        "single file beside shards",
    ):
        directory = root / case.replace(" ", "_")
        shutil.copytree(source, directory)
        cases[case] = directory
    shutil.copy(
        source / "model-00001-of-00002.safetensors",
        cases["index beside single file"] / "model.safetensors",
    )
    shutil.copy(
        source / "model-00001-of-00002.safetensors",
        cases["shard not in index"] / "model-00001-of-00003.safetensors",
    )
    (cases["index names missing shard"] / "model-00002-of-00002.safetensors").unlink()
    (cases["single file beside shards"] / weights.INDEX_NAME).unlink()
    shutil.copy(
        source / "model-00001-of-00002.safetensors",
        cases["single file beside shards"] / "model.safetensors",
    )
    return cases


def test_the_loader_refuses_a_directory_whose_files_disagree(fixture_weights, tmp_path):
    tensors = load_file(fixture_weights / "model.safetensors")
    source = tmp_path / "sharded"
    save_weights(
        source,
        [(n, t.shape, t.dtype, lambda t=t: t) for n, t in tensors.items()],
        max_shard_bytes=6 * 2**20,
    )
    shutil.copy(fixture_weights / "config.json", source / "config.json")
    assert len(weight_files(source)) == 2
    OSUM.from_pretrained(source, device="cpu")
    for case, directory in mixed_directories(tmp_path, source).items():
        with pytest.raises(WeightsError) as caught:
            OSUM.from_pretrained(directory, device="cpu")
        assert str(directory) in str(caught.value) and "different writes" in str(
            caught.value
        ), case
        assert len(str(caught.value).splitlines()) == 1
    (source / weights.INDEX_NAME).write_text(
        json.dumps({"weight_map": {"w": "../elsewhere.safetensors"}})
    )
    with pytest.raises(WeightsError, match="names files that are not shards"):
        weight_files(source)


def test_save_weights_removes_an_earlier_writes_files(tmp_path):
    entries = [
        (f"w{i}", torch.Size([64, 1024]), torch.float32, lambda: torch.ones(64, 1024))
        for i in range(4)
    ]
    save_weights(tmp_path, entries, max_shard_bytes=2**18)
    assert len(weight_files(tmp_path)) == 4
    save_weights(tmp_path, entries)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]


# --- issue 16.8: a tokenizer that does not fit the model ----------------------------------------------------------


def test_convert_refuses_a_tokenizer_larger_than_the_vocabulary(tmp_path, capsys):
    byte_tokenizer(eod=1100, pairs=700).save(tmp_path / "big.tiktoken")
    code, _, err = run_convert(
        capsys,
        FIXTURE_A / "infer.pt",
        "--config",
        CONFIG_A,
        "--tokenizer",
        tmp_path / "big.tiktoken",
        "--out",
        tmp_path / "o",
    )
    assert (
        code == 2
        and one_line(err)
        and "1101 ids" in err
        and "1024" in err
        and not (tmp_path / "o").exists()
    )


def test_convert_refuses_an_eod_outside_the_vocabulary_with_a_tokenizer(
    tmp_path, capsys
):
    byte_tokenizer(eod=1000, pairs=700).save(tmp_path / "fits.tiktoken")
    args = [
        FIXTURE_A / "infer.pt",
        "--tokenizer",
        tmp_path / "fits.tiktoken",
        "--out",
        tmp_path / "o",
    ]
    # the fixture keeps the original's eod 151643
    code, _, err = run_convert(capsys, *args, "--config", CONFIG_A)
    assert code == 2 and one_line(err) and "eod_id 151643" in err and "1024" in err
    config = json.loads(CONFIG_A.read_text())
    (tmp_path / "eod1000.json").write_text(json.dumps({**config, "eod_id": 1000}))
    code, out, err = run_convert(capsys, *args, "--config", tmp_path / "eod1000.json")
    assert (
        code == 0
        and "warning" not in err
        and OSUM.from_pretrained(tmp_path / "o", device="cpu").config.eod_id == 1000
    )


def test_infer_refuses_a_tokenizer_larger_than_the_model(
    fixture_weights, tmp_path, capsys
):
    shutil.copytree(fixture_weights, tmp_path / "w")
    byte_tokenizer(eod=1100, pairs=700).save(tmp_path / "w")
    code, out, err = run_infer(
        capsys, FIXTURE_A / "audio.wav", "--weights", tmp_path / "w", "--task", "asr"
    )
    assert (
        code == 2
        and out == ""
        and one_line(err)
        and "1101 ids" in err
        and "1024" in err
    )


def test_ids_the_tokenizer_lacks_never_stop_inference(
    fixture_weights, tmp_path, capsys
):
    shutil.copytree(fixture_weights, tmp_path / "w")
    # no ids 256..999: most ids the model generates are unknown
    byte_tokenizer(eod=1000).save(tmp_path / "w")
    flags = [
        "--weights",
        tmp_path / "w",
        "--beams",
        "1",
        "--max-new-tokens",
        "6",
        "--prompt-ids",
        "17,230,511",
    ]
    with pytest.warns(UserWarning, match="outside this tokenizer's vocabulary"):
        code, out, err = run_infer(capsys, FIXTURE_A / "audio.wav", *flags, "--stream")
    assert code == 0 and "<|id:" in out
    with pytest.warns(UserWarning, match="outside this tokenizer's vocabulary"):
        code, out, err = run_infer(
            capsys,
            FIXTURE_A / "audio.wav",
            FIXTURE_A / "audio_batch_item1.wav",
            *flags,
            "--json",
        )
    assert code == 0 and len(out.splitlines()) == 2 and "<|id:" in out


def test_tokenizer_placeholders_keep_the_known_text():
    tokenizer = byte_tokenizer(eod=299, pairs=43)
    ids = tokenizer.encode("ab") + [5000] + tokenizer.encode("é")
    with pytest.warns(UserWarning, match="5000"):
        assert tokenizer.decode(ids, placeholders=True) == "ab<|id:5000|>é"


def test_an_id_past_the_tokenizer_shows_in_the_joined_windows_as_when_streamed():
    """One policy for ids the tokenizer lacks: the parsed, windowed result shows them as the stream does."""
    from osum_min.text.tasks import TASKS, parse_windows

    tokenizer = byte_tokenizer(eod=299, pairs=43)
    ids = tokenizer.encode("ab") + [5000] + tokenizer.encode(" cd")
    with pytest.warns(UserWarning, match="5000"):
        result = parse_windows(
            TASKS["asr"], tokenizer, [ids, tokenizer.encode("ef")], [0.0, 30.0]
        )
    assert result.transcript == "ab<|id:5000|> cd ef"
    assert result.issues == [
        "window 0: ids outside the tokenizer's vocabulary, shown as <|id:N|>"
    ]


def test_fine_tuning_a_model_whose_eod_lies_outside_its_vocabulary_is_one_line(
    tmp_path, fixture_weights
):
    """fixture_a (1024 ids, eod 151643) would end every label with an id past its embeddings (an IndexError deep in
    torch before): train.py refuses it up front, naming the config and both numbers."""
    import train
    from osum_min.training.steps import TrainingError

    Tokenizer(
        {bytes([i]): i for i in range(256)}, [AddedToken("<|endoftext|>", 1000, True)]
    ).save(tmp_path / "b.tok")
    with pytest.raises(
        TrainingError,
        match=r"config.json: the model's eod_id 151643 lies outside its vocabulary of "
        r"1024 ids",
    ):
        train.main(
            [
                "--train-data",
                str(tmp_path / "none.jsonl"),
                "--init",
                str(fixture_weights),
                "--tokenizer",
                str(tmp_path / "b.tok"),
                "--out",
                str(tmp_path / "out"),
                "--device",
                "cpu",
            ]
        )


def test_an_undecodable_id_never_stops_training_evaluation(tmp_path):
    """A tiny model decodes ids 256..999 that a byte tokenizer lacks; the run still ends with OUT/final."""
    import train

    rng = np.random.default_rng(0)
    lines = []
    for index in range(2):
        soundfile.write(
            tmp_path / f"clip{index}.wav",
            0.1 * rng.standard_normal(16000).astype(np.float32),
            16000,
        )
        lines.append(
            {
                "key": f"c{index}",
                "wav": str(tmp_path / f"clip{index}.wav"),
                "txt": "ab",
                "task": "<TRANSCRIBE>",
            }
        )
    (tmp_path / "data.jsonl").write_text(
        "".join(json.dumps(line) + "\n" for line in lines)
    )
    (tmp_path / "prompts.json").write_text(json.dumps({"<TRANSCRIBE>": ["say it"]}))
    Tokenizer(
        {bytes([i]): i for i in range(256)}, [AddedToken("<|endoftext|>", 1000, True)]
    ).save(tmp_path / "b.tok")
    code = train.main(
        [
            "--train-data",
            str(tmp_path / "data.jsonl"),
            "--dev-data",
            str(tmp_path / "data.jsonl"),
            "--tokenizer",
            str(tmp_path / "b.tok"),
            "--prompts",
            str(tmp_path / "prompts.json"),
            "--preset",
            "tiny",
            "--out",
            str(tmp_path / "out"),
            "--max-steps",
            "1",
            "--num-workers",
            "0",
            "--eval-batches",
            "1",
            "--accum-grad",
            "1",
            "--no-augment",
            "--device",
            "cpu",
        ]
    )
    assert code == 0 and (tmp_path / "out" / "final" / "model.safetensors").is_file()
    records = [
        json.loads(line)
        for line in (tmp_path / "out" / "train_log.jsonl").read_text().splitlines()
    ]
    # counted
    assert any(
        record.get("eval", record).get("undecodable_outputs", 0) > 0
        for record in records
    )


# --- issue 16.10: configs -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, reason",
    [
        ("{}", "no encoder_conf"),
        ("[1, 2]", "a JSON list"),
        ("{not json", "not valid JSON"),
        ('{"encoder_conf": {}, "llm_config": {}}', "encoder_conf lacks output_size"),
        (
            CONFIG_A.read_text().replace('"output_size": 64', '"output_size": "64"'),
            "encoder_conf.output_size is '64', not a positive whole number",
        ),
    ],
)
def test_bad_original_configs_are_one_line_naming_the_file(
    tmp_path, capsys, text, reason
):
    (tmp_path / "cfg.json").write_text(text)
    code, _, err = run_convert(
        capsys,
        FIXTURE_A / "infer.pt",
        "--config",
        tmp_path / "cfg.json",
        "--out",
        tmp_path / "o",
    )
    assert code == 2 and one_line(err) and "cfg.json" in err and reason in err


@pytest.mark.parametrize(
    "text, reason",
    [
        ("{}", "no 'encoder' field"),
        ("[1, 2]", "not an osum-min config.json"),
        ("{not json", "not valid JSON"),
    ],
)
def test_bad_configs_in_a_weights_directory_are_one_line(
    fixture_weights, tmp_path, capsys, text, reason
):
    shutil.copytree(fixture_weights, tmp_path / "w")
    (tmp_path / "w" / "config.json").write_text(text)
    code, _, err = run_infer(
        capsys, FIXTURE_A / "audio.wav", "--weights", tmp_path / "w", *GREEDY
    )
    assert code == 2 and one_line(err) and "config.json" in err and reason in err


def test_a_tiny_preset_round_trips_through_the_original_layout(tmp_path, capsys):
    torch.manual_seed(0)
    model = OSUM(OSUM_PRESETS["tiny"])
    model.save_pretrained(tmp_path / "ours")
    code, out, _ = run_convert(
        capsys, "--to-original", tmp_path / "ours", "--out", tmp_path / "infer.pt"
    )
    assert (
        code == 0
        and str(tmp_path / "infer.pt") in out
        and (tmp_path / "infer_config.json").is_file()
    )
    code, _, err = run_convert(
        capsys,
        tmp_path / "infer.pt",
        "--config",
        tmp_path / "infer_config.json",
        "--out",
        tmp_path / "back",
    )
    assert code == 0, err
    before, after = (
        load_file(tmp_path / "ours" / "model.safetensors"),
        load_file(tmp_path / "back" / "model.safetensors"),
    )
    assert before.keys() == after.keys() and all(
        torch.equal(before[k], after[k]) for k in before
    )
    assert (
        OSUMConfig.from_file(tmp_path / "back" / "config.json") == OSUM_PRESETS["tiny"]
    )


# --- issue 16.11: the smaller ones --------------------------------------------------------------------------------


def foreign_files(tmp_path: Path) -> dict[str, Path]:
    files = {
        "empty": tmp_path / "empty.pt",
        "random": tmp_path / "random.pt",
        "safetensors": tmp_path / "st.pt",
    }
    files["empty"].write_bytes(b"")
    files["random"].write_bytes(np.random.default_rng(0).bytes(4096))
    save_file({"a": torch.ones(3)}, files["safetensors"])
    return files


@pytest.mark.parametrize(
    "kind, message",
    [
        ("empty", "empty file (0 bytes)"),
        ("random", "not a PyTorch checkpoint"),
        ("safetensors", "a safetensors file"),
    ],
)
def test_foreign_files_get_one_whole_line_of_our_own(tmp_path, capsys, kind, message):
    path = foreign_files(tmp_path)[kind]
    code, _, err = run_convert(
        capsys, path, "--config", CONFIG_A, "--out", tmp_path / "o"
    )
    assert (
        code == 2
        and one_line(err)
        and message in err
        and str(path) in err
        and "mmap" not in err
    )


def test_a_malicious_pickle_runs_nothing(tmp_path, capsys):
    class Payload:
        def __reduce__(self):
            return (Path.touch, (tmp_path / "ran",))

    for legacy in (False, True):
        torch.save(
            {"a": Payload()},
            tmp_path / "evil.pt",
            _use_new_zipfile_serialization=not legacy,
        )
        code, _, err = run_convert(
            capsys, tmp_path / "evil.pt", "--config", CONFIG_A, "--out", tmp_path / "o"
        )
        assert (
            code == 2
            and one_line(err)
            and "refused" in err
            and not (tmp_path / "ran").exists()
        )


def test_an_old_format_checkpoint_converts(fixture_weights, tmp_path, capsys):
    state = torch.load(FIXTURE_A / "infer.pt", weights_only=True)
    torch.save(state, tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    code, _, err = run_convert(
        capsys, tmp_path / "old.pt", "--config", CONFIG_A, "--out", tmp_path / "o"
    )
    assert code == 0, err
    assert (tmp_path / "o" / "model.safetensors").read_bytes() == (
        fixture_weights / "model.safetensors"
    ).read_bytes()


def test_a_symlinked_out_keeps_pointing_at_the_new_model(
    fixture_weights, tmp_path, capsys
):
    shutil.copytree(fixture_weights, tmp_path / "real")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    code, _, err = run_convert(
        capsys,
        FIXTURE_A / "infer.pt",
        "--config",
        CONFIG_A,
        "--dtype",
        "bf16",
        "--out",
        tmp_path / "link",
    )
    assert code == 0, err
    assert (tmp_path / "link").is_symlink() and sorted(
        p.name for p in tmp_path.iterdir()
    ) == [
        "link",
        "real",
    ]
    assert (
        load_file(tmp_path / "real" / "model.safetensors")["speech_bos_eos"].dtype
        == torch.bfloat16
    )


def test_a_full_disk_leaves_no_partial_file(tmp_path):
    def full():
        raise OSError(28, "No space left on device")

    entries = [
        ("a", torch.Size([4]), torch.float32, lambda: torch.ones(4)),
        ("b", torch.Size([4]), torch.float32, full),
    ]
    with pytest.raises(
        FileError,
        match="direct/model.safetensors: cannot write: No space left on device",
    ):
        save_weights(tmp_path / "direct", entries)
    assert list((tmp_path / "direct").iterdir()) == []
    # named in the message, not the hidden folder written first (issue 23)
    swapped = tmp_path / "swapped"
    with (
        pytest.raises(
            WeightsError,
            match=f"^{swapped}: cannot write the model \\(No space left on device\\)",
        ),
        replacing_directory(swapped) as new,
    ):
        save_weights(new, entries)
    assert list(tmp_path.iterdir()) == [tmp_path / "direct"]


def test_export_on_a_full_disk_leaves_no_partial_file(
    fixture_weights, tmp_path, monkeypatch
):
    from osum_min.convert import export

    def full(state, file):
        file.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export.torch, "save", full)
    with pytest.raises(
        FileError, match="infer.pt: cannot write: No space left on device"
    ):
        export.export_original(fixture_weights, tmp_path / "infer.pt")
    assert list(tmp_path.iterdir()) == []


def test_the_released_config_on_a_small_checkpoint_hints_at_config(tmp_path, capsys):
    code, _, err = run_convert(capsys, FIXTURE_A / "infer.pt", "--out", tmp_path / "o")
    assert (
        code == 2
        and one_line(err)
        and "missing 954 key(s)" in err
        and "--config" in err
    )
    torch.save({"not.a.key": torch.ones(1)}, tmp_path / "foreign.pt")
    # no config could map it
    code, _, err = run_convert(capsys, tmp_path / "foreign.pt", "--out", tmp_path / "o")
    assert (
        code == 2
        and one_line(err)
        and "unexpected 1 key(s): not.a.key" in err
        and "--config" not in err
    )


# --- issue 23: every config value is checked where a config is read, before any weight ------------------------------


@pytest.mark.parametrize(
    "old, new, reason",
    [
        (
            '"rope_theta": 1000000.0',
            '"rope_theta": NaN',
            "llm_config.rope_theta is nan, not a finite number",
        ),
        (
            '"rope_theta": 1000000.0',
            '"rope_theta": 0',
            "llm_config.rope_theta is 0, not above 0",
        ),
        (
            '"rope_theta": 1000000.0',
            '"rope_theta": -10000.0',
            "llm_config.rope_theta is -10000.0, not above 0",
        ),
        (
            '"rms_norm_eps": 1e-06',
            '"rms_norm_eps": -1',
            "llm_config.rms_norm_eps is -1, not above 0",
        ),
        (
            '"rms_norm_eps": 1e-06',
            '"rms_norm_eps": Infinity',
            "llm_config.rms_norm_eps is inf, not a finite number",
        ),
        (
            '"lora_rank": 8',
            '"lora_rank": true',
            "lora_rank is True, not a whole number",
        ),
        ('"lora_rank": 8', '"lora_rank": -8', "lora_rank is -8, below 0"),
        ('"lora_rank": 8', '"lora_rank": 0', "lora_rank is 0 with use_lora true"),
        ('"lora_alpha": 32', '"lora_alpha": 0', "lora_alpha is 0, not above 0"),
        ('"lora_alpha": 32', '"lora_alpha": -32', "lora_alpha is -32, not above 0"),
        (
            '"lora_dropout": 0.1',
            '"lora_dropout": 1.5',
            "lora_dropout is 1.5, not below 1",
        ),
        ('"use_lora": true', '"use_lora": "no"', "use_lora is 'no', not true or false"),
        (
            '"num_key_value_heads": 2',
            '"num_key_value_heads": 3',
            "llm_config.num_key_value_heads is 3, not a divisor",
        ),
        (
            '"max_position_embeddings": 2048',
            '"max_position_embeddings": 2048.5',
            "not a whole number",
        ),
        (
            '"tie_word_embeddings": false',
            '"tie_word_embeddings": 0',
            "llm_config.tie_word_embeddings is 0, not true",
        ),
        (
            '"speech_token_num": 4097',
            '"speech_token_num": -1',
            "speech_token_num is -1, below 0",
        ),
        ('"input_dim": 80', '"input_dim": 0', "input_dim is 0, below 1"),
        (
            '"use_lora": true',
            '"use_lora": false',
            "LoRA tensors, but the config has use_lora false",
        ),
    ],
)
def test_bad_config_values_are_one_line_before_converting(
    tmp_path, capsys, old, new, reason
):
    """Each converted and decoded zeros (NaN RoPE), dropped the LoRA tensors or crashed with a traceback."""
    assert old in CONFIG_A.read_text()
    (tmp_path / "cfg.json").write_text(CONFIG_A.read_text().replace(old, new))
    code, _, err = run_convert(
        capsys,
        FIXTURE_A / "infer.pt",
        "--config",
        tmp_path / "cfg.json",
        "--out",
        tmp_path / "o",
    )
    assert code == 2 and one_line(err) and "cfg.json" in err and reason in err, err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "section, field, value, reason",
    [
        (
            "llm",
            "rope_theta",
            float("nan"),
            "llm.rope_theta is nan, not a finite number",
        ),
        ("llm", "norm_eps", -1.0, "llm.norm_eps is -1.0, not above 0"),
        ("llm", "lora_rank", True, "llm.lora_rank is True, not a whole number"),
        ("llm", "lora_alpha", 0, "llm.lora_alpha is 0, not above 0"),
        # the directory's LoRA tensors are refused, not dropped
        (
            "llm",
            "lora_rank",
            0,
            "unexpected 24 key(s)",
        ),
        ("encoder", "heads", 0, "encoder.heads is 0, below 1"),
        ("adaptor", "layers", "2", "adaptor.layers is '2', not a whole number"),
        (None, "eod_id", -1, "eod_id is -1, below 0"),
        (
            None,
            "max_mel_frames",
            3000.0,
            "max_mel_frames is 3000.0, not a whole number",
        ),
    ],
)
def test_bad_config_values_in_a_weights_directory_are_one_line(
    fixture_weights, tmp_path, capsys, section, field, value, reason
):
    shutil.copytree(fixture_weights, tmp_path / "w")
    config = json.loads((tmp_path / "w" / "config.json").read_text())
    (config[section] if section else config)[field] = value
    (tmp_path / "w" / "config.json").write_text(json.dumps(config))
    code, _, err = run_infer(
        capsys, FIXTURE_A / "audio.wav", "--weights", tmp_path / "w", *GREEDY
    )
    assert (
        code == 2 and one_line(err) and reason in err and str(tmp_path / "w") in err
    ), err
