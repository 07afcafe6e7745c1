"""The one input layer (osum_min/files.py), issue 23: every path that becomes an input is a regular file of a
bounded size, UTF-8 with or without a BOM; whatever goes wrong there is one line naming the path, and a run over a
list goes on. Anything that could block runs in a subprocess under a timeout, so a regression fails, not hangs."""

import errno
import io
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

import convert
from conftest import FIXTURE_A
from osum_min import files
from osum_min.audio import AudioError, load_audio, log_mel
from osum_min.training.checkpoints import save_checkpoint
from osum_min.data.formats import DataError, read_data_list, read_samples
from osum_min.files import FileError, open_file
from osum_min.inference.inputs import collect_inputs
from osum_min.model.osum import OSUMConfig
from osum_min.training.steps import TrainingError

ROOT = Path(__file__).resolve().parent.parent
AUDIO = FIXTURE_A / "audio.wav"
PROMPT = "17,230,511,42,901,7,333"
# one path component over 255 bytes: OSError "File name too long" from stat
LONG_NAME = "x" * 300 + ".wav"
DEEP = "[" * 100_000 + "]" * 100_000  # RecursionError in json.loads


def infer_subprocess(weights, *inputs, timeout=240) -> subprocess.CompletedProcess:
    """infer.py as a user runs it; a hang is a TimeoutExpired, i.e. a failure."""
    argv = [
        sys.executable,
        str(ROOT / "infer.py"),
        *map(str, inputs),
        "--weights",
        str(weights),
        "--prompt-ids",
        PROMPT,
        "--ids",
        "--beams",
        "1",
        "--max-new-tokens",
        "4",
    ]
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
    )


def python_subprocess(code: str, timeout=60) -> str:
    """Run `code` with the repository importable; its stdout (what it printed) or a TimeoutExpired."""
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def one_error_line(err: str) -> list[str]:
    lines = [
        line
        for line in err.splitlines()
        if line.strip() and not line.startswith("infer.py: warning:")
    ]
    assert "Traceback" not in err
    return lines


# ---------------------------------------------------------------- hangs: non-regular files


def test_a_fifo_in_a_folder_is_one_line_and_the_rest_decoded(fixture_weights, tmp_path):
    (tmp_path / "good.wav").write_bytes(AUDIO.read_bytes())
    os.mkfifo(tmp_path / "pipe.wav")  # blocked forever in soundfile.info before
    done = infer_subprocess(fixture_weights, tmp_path)
    assert done.returncode == 1
    assert [line.split("\t")[0] for line in done.stdout.splitlines()] == [
        str(tmp_path / "good.wav")
    ]
    assert one_error_line(done.stderr) == [
        f"infer.py: skipped {tmp_path / 'pipe.wav'}: a FIFO (named pipe), not an audio file"
    ]


@pytest.mark.parametrize("kind", ["fifo", "socket", "device", "directory"])
def test_a_path_that_is_not_a_regular_file_is_refused_as_audio_without_opening_it(
    tmp_path, kind
):
    path = tmp_path / "x.wav"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(path))
    elif kind == "directory":
        path.mkdir()
    else:
        path = Path("/dev/zero")
    printed = python_subprocess(
        f"from osum_min.audio import load_audio\ntry:\n    load_audio({str(path)!r})\n"
        f"except ValueError as err:\n    print(type(err).__name__, err)"
    )
    what = {
        "fifo": "a FIFO (named pipe)",
        "socket": "a socket",
        "device": "a character device",
        "directory": "is a directory",
    }[kind]
    assert printed == f"AudioError {path}: {what}, not an audio file"


def test_a_file_swapped_for_a_fifo_after_the_check_is_refused_on_its_descriptor(
    tmp_path, monkeypatch
):
    os.mkfifo(tmp_path / "swapped.wav")
    # as if it was a file when checked
    monkeypatch.setattr(files, "check_file", lambda path, what: None)
    with pytest.raises(FileError, match="swapped.wav: a FIFO"):
        # opened without blocking, then refused
        open_file(tmp_path / "swapped.wav", "audio file")


@pytest.mark.parametrize("source", ["/dev/zero", "big.bin"])
def test_a_device_or_huge_file_given_as_a_list_is_one_line_without_reading_it(
    tmp_path, source, capsys
):
    import infer

    if source == "big.bin":
        source = tmp_path / "big.bin"
        with open(source, "wb") as f:  # sparse: 1.3 GB that the test never writes
            f.truncate(1_300_000_000)
    code = infer.main(
        [str(source), "--weights", str(tmp_path), "--prompt-ids", PROMPT, "--ids"]
    )
    err = capsys.readouterr().err
    assert code == 2 and len(one_error_line(err)) == 1
    assert (
        "a character device"
        if source == "/dev/zero"
        else "1239.8 MiB, more than a list of audio files"
    ) in err


# ---------------------------------------------------------------- one bad item, the rest goes on


def test_a_gsm_au_file_that_soundfile_cannot_seek_decodes(tmp_path):
    t = np.arange(16000) / 16000
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    # ValueError before
    soundfile.write(tmp_path / "g721.au", tone, 16000, format="AU", subtype="G721_32")
    wav = load_audio(tmp_path / "g721.au").numpy()
    assert len(wav) >= len(tone)
    # ADPCM at 4 bits a sample: observed 0.999
    assert np.corrcoef(wav[: len(tone)], tone)[0, 1] > 0.95


def test_an_exception_of_any_type_from_soundfile_is_an_audio_error(
    tmp_path, monkeypatch
):
    (tmp_path / "a.wav").write_bytes(AUDIO.read_bytes())

    def broken(*args, **kwargs):
        raise MemoryError(
            "what a header promising 2**40 frames did to an earlier reader"
        )

    monkeypatch.setattr(soundfile.SoundFile, "read", broken)
    with pytest.raises(
        AudioError, match="a.wav: not a readable audio file \\(MemoryError: "
    ):
        load_audio(tmp_path / "a.wav")


def test_a_name_over_255_bytes_is_that_items_error(fixture_weights, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text(f"{AUDIO}\n{tmp_path / LONG_NAME}\n")
    # OSError from Path.exists before
    items = collect_inputs([str(listing), str(tmp_path / LONG_NAME)])
    assert [item.path for item in items] == [
        str(AUDIO),
        str(tmp_path / LONG_NAME),
        str(tmp_path / LONG_NAME),
    ]
    for item in items[1:]:
        with pytest.raises(AudioError, match="file name too long"):
            load_audio(item.path)
    done = infer_subprocess(fixture_weights, listing)
    assert done.returncode == 1 and len(done.stdout.splitlines()) == 1
    assert len(one_error_line(done.stderr)) == 1 and "file name too long" in done.stderr


def test_a_list_line_nested_100000_deep_is_that_lines_error(tmp_path):
    listing = tmp_path / "list.jsonl"
    listing.write_text(
        json.dumps({"key": "a", "wav": str(AUDIO)}) + '\n{"x": ' + DEEP + "}\n"
    )
    items = collect_inputs([str(listing)])
    assert (
        items[0].problem is None
        and items[1].problem == "not a wenet list line (JSON nested too deeply)"
    )
    training = tmp_path / "train.jsonl"
    training.write_text('{"key": ' + DEEP + "}\n")
    with pytest.raises(DataError, match=r"train.jsonl:1: JSON nested too deeply$"):
        read_data_list(training)


def test_a_config_nested_100000_deep_is_one_line(tmp_path, capsys):
    config = tmp_path / "config.json"
    config.write_text(DEEP)
    code = convert.main(
        [
            str(FIXTURE_A / "infer.pt"),
            "--config",
            str(config),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert (
        code == 2
        and capsys.readouterr().err
        == f"convert.py: error: {config}: JSON nested too deeply\n"
    )
    with pytest.raises(FileError, match="config.json: JSON nested too deeply"):
        OSUMConfig.from_file(config)


def test_a_file_name_that_is_not_utf8_is_decoded_and_printed(fixture_weights, tmp_path):
    folder = tmp_path / "clips"
    folder.mkdir()
    (folder / "good.wav").write_bytes(AUDIO.read_bytes())
    # latin-1 name
    (Path(os.fsdecode(bytes(folder) + b"/caf\xe9.wav"))).write_bytes(AUDIO.read_bytes())
    # UnicodeEncodeError inside soundfile before: no output at all
    done = infer_subprocess(fixture_weights, folder)
    assert done.returncode == 0, done.stderr
    keys = [line.split("\t")[0] for line in done.stdout.splitlines()]
    # the undecodable byte shown as an escape (infer.py escapes keys too)
    assert keys[1] == f"{folder}/good.wav"
    assert keys[0].startswith(f"{folder}/caf\\") and keys[0].endswith("xe9.wav")


def test_samples_far_beyond_full_scale_are_refused_not_decoded_as_zeros(
    fixture_weights, tmp_path
):
    t = np.arange(16000) / 16000
    soundfile.write(
        tmp_path / "loud.wav",
        (1e18 * np.sin(2 * np.pi * 440 * t)).astype(np.float32),
        16000,
        subtype="FLOAT",
    )
    with pytest.raises(AudioError, match="loud.wav: samples up to 1e\\+18, not audio"):
        load_audio(tmp_path / "loud.wav")
    # printed `0 0 0 0`, exit 0, before
    done = infer_subprocess(fixture_weights, tmp_path / "loud.wav")
    assert (
        done.returncode == 2
        and done.stdout == ""
        and "samples up to 1e+18" in done.stderr
    )
    skipped = []  # training: the clip is skipped and counted, not a NaN loss that skips its whole batch
    assert (
        list(
            read_samples(
                [{"key": "loud", "wav": str(tmp_path / "loud.wav")}],
                lambda *s: skipped.append(s),
            )
        )
        == []
    )
    assert [(key, str(problem)) for key, _, problem in skipped] == [
        (
            "loud",
            str(
                AudioError(
                    tmp_path / "loud.wav",
                    "samples up to 1e+18, not audio (full scale is 1; beyond 1e+12 the log-mel features "
                    "overflow)",
                )
            ),
        )
    ]
    with pytest.raises(AudioError, match="^clip: its log-mel features are not finite"):
        log_mel(torch.from_numpy(1e18 * np.sin(2 * np.pi * 440 * t)).float(), "clip")


# ---------------------------------------------------------------- data lost: byte-order marks


def test_a_list_with_a_byte_order_mark_keeps_its_first_entry(tmp_path):
    listing = tmp_path / "list.jsonl"
    lines = [
        json.dumps({"key": "first", "wav": str(AUDIO)}),
        json.dumps({"key": "second", "wav": str(AUDIO)}),
    ]
    listing.write_text("\ufeff" + "\n".join(lines) + "\n", encoding="utf-8")
    assert [(item.key, item.problem) for item in collect_inputs([str(listing)])] == [
        ("first", None),
        ("second", None),
    ]
    # not a tar shard "\ufeff{..."
    assert [item["key"] for item in read_data_list(listing)] == [
        "first",
        "second",
    ]
    config = tmp_path / "config.json"
    config.write_text("\ufeff" + json.dumps(OSUMConfig().to_dict()), encoding="utf-8")
    assert OSUMConfig.from_file(config) == OSUMConfig()


# ---------------------------------------------------------------- checkpoint paths and full disks


@pytest.mark.parametrize(
    "kind, problem",
    [
        ("directory", "is a directory, not a checkpoint file"),
        ("loop", "a symbolic link loop"),
    ],
)
def test_a_folder_or_link_loop_given_as_the_checkpoint_says_what_it_is(
    tmp_path, capsys, kind, problem
):
    path = tmp_path / "infer.pt"
    if kind == "directory":
        path.mkdir()
    else:
        path.symlink_to(tmp_path / "other.pt")
        (tmp_path / "other.pt").symlink_to(path)
    code = convert.main(
        [
            str(path),
            "--config",
            str(FIXTURE_A / "osum_config.json"),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    # "no such file" before
    assert (
        code == 2
        and capsys.readouterr().err == f"convert.py: error: {path}: {problem}\n"
    )


def full_disk_after(monkeypatch, limit: int):
    """Every file osum_min.files writes takes `limit` bytes, then fails as a full disk does."""
    real_open = open

    class Full(io.FileIO):
        def write(self, data):
            if self.tell() + len(data) > limit:
                raise OSError(errno.ENOSPC, "No space left on device")
            return super().write(data)

    monkeypatch.setattr(
        files,
        "open",
        lambda path, mode: Full(path, mode) if "w" in mode else real_open(path, mode),
        raising=False,
    )


def test_a_full_disk_while_converting_names_the_output(tmp_path, capsys, monkeypatch):
    full_disk_after(monkeypatch, 4096)
    out = tmp_path / "model"
    code = convert.main(
        [
            str(FIXTURE_A / "infer.pt"),
            "--config",
            str(FIXTURE_A / "osum_config.json"),
            "--out",
            str(out),
        ]
    )
    assert code == 2 and capsys.readouterr().err.splitlines()[-1] == (
        f"convert.py: error: {out}: cannot write the model (No space left on device); {out} is as it was"
    )
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_while_saving_a_training_checkpoint_names_it_and_leaves_no_tmp(
    tmp_path, monkeypatch
):
    full_disk_after(monkeypatch, 4096)
    state = {"model": {"w": torch.zeros(100_000)}, "step": 3}
    # RuntimeError [enforce fail at inline_container.cc] before
    with pytest.raises(TrainingError) as caught:
        save_checkpoint(tmp_path, 3, state, keep_last=2)
    assert (
        str(caught.value)
        == f"{tmp_path / 'step_00000003.pt'}: cannot write: No space left on device"
    )
    assert list(tmp_path.iterdir()) == []


def test_a_key_or_file_given_twice_is_decoded_once_and_the_second_named(tmp_path):
    """A list line repeated, or a folder reachable twice through a symbolic link: the second is that item's error
    naming the first (never decoded, printed and scored twice); a training list refuses a sample given twice."""
    folder = tmp_path / "speaker"
    folder.mkdir()
    (folder / "a.wav").write_bytes(AUDIO.read_bytes())
    (tmp_path / "again").symlink_to(folder)
    listing = tmp_path / "list.jsonl"
    line = json.dumps({"key": "k", "wav": str(AUDIO), "txt": "x"}) + "\n"
    listing.write_text(
        line + json.dumps({"key": "k2", "wav": str(AUDIO)}) + "\n" + line
    )
    items = collect_inputs([str(folder), str(tmp_path / "again"), str(listing)])
    assert [item.problem is None for item in items] == [True, False, True, True, False]
    assert (
        items[1].problem.startswith("file ")
        and str(folder / "a.wav") in items[1].problem
    )
    assert items[4].problem == f"key 'k' given twice (first as {AUDIO}): decoded once"
    training = tmp_path / "train.jsonl"
    training.write_text(line + line.replace('"x"}', '"x", "task": "<AGE>"}') + line)
    with pytest.raises(
        DataError,
        match=r"train.jsonl:3: key 'k' \(task none\) is given twice \(also line 1\)",
    ):
        read_data_list(training)
