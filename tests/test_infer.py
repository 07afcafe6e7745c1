"""infer.py end to end on fixture_a's weights (converted by convert.py): ids equal the original's, batches equal
single files, JSON parses, bad files are skipped, usage errors exit 2, and long audio is windowed and joined."""

import json
import shutil

import numpy as np
import pytest
import soundfile

import infer
from conftest import FIXTURE_A
from osum_min.audio import SAMPLE_RATE, load_audio, log_mel, pad_features
from osum_min.model.osum import OSUM
from osum_min.text.tasks import TASKS, Word, parse
from osum_min.text.tokenizer import AddedToken, Tokenizer
from osum_min.inference.subtitles import subtitles

PROMPT = "17,230,511,42,901,7,333"
GREEDY_16 = [
    "--prompt-ids",
    PROMPT,
    "--ids",
    "--beams",
    "1",
    "--repetition-penalty",
    "1.0",
    "--max-new-tokens",
    "16",
]
AUDIO = [
    FIXTURE_A / "audio.wav",
    FIXTURE_A / "audio_batch_item1.wav",
    FIXTURE_A / "audio_44k.wav",
]


def run(capsys, *argv):
    code = infer.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err


@pytest.fixture(scope="module")
def weights_with_tokenizer(fixture_weights, tmp_path_factory):
    """The fixture weights plus a stand-in byte-level tokenizer sized to the tiny vocabulary (eod = 1000)."""
    out = tmp_path_factory.mktemp("fixture_a_tokenizer")
    for path in fixture_weights.iterdir():
        shutil.copy(path, out / path.name)
    symbols = b"abcdefghijklmnopqrstuvwxyz0123456789 "
    ranks = {bytes([b]): b for b in range(256)}
    for pair in (bytes([x, y]) for x in symbols for y in symbols):
        if len(ranks) < 1000:
            ranks[pair] = len(ranks)
    added = [AddedToken("<|endoftext|>", 1000, True)]
    added += [AddedToken(f"<|extra_{i}|>", 1000 + i, True) for i in range(1, 24)]
    Tokenizer(ranks, added).save(out)
    return out


def test_cli_ids_equal_the_original_and_model_generate(
    capsys, fixture_weights, expected
):
    code, lines, _ = run(capsys, AUDIO[0], "--weights", fixture_weights, *GREEDY_16)
    assert code == 0 and len(lines) == 1
    cli_ids = [int(token) for token in lines[0].split()]
    assert cli_ids == expected["generate_greedy_ids"].tolist()
    model = OSUM.from_pretrained(fixture_weights, device="cpu")
    mel, lens = pad_features([log_mel(load_audio(AUDIO[0]))])
    [model_ids] = model.generate(
        mel,
        lens,
        [[int(t) for t in PROMPT.split(",")]],
        max_new_tokens=16,
        num_beams=1,
        repetition_penalty=1.0,
    )
    assert cli_ids == model_ids


def test_default_decoding_is_beam4_with_penalty(capsys, fixture_weights, expected):
    code, lines, _ = run(
        capsys,
        AUDIO[0],
        "--weights",
        fixture_weights,
        "--prompt-ids",
        PROMPT,
        "--ids",
        "--max-new-tokens",
        "16",
    )
    assert code == 0
    assert [int(token) for token in lines[0].split()] == expected[
        "generate_beam4_rep1.05_ids"
    ].tolist()


def test_stream_prints_the_greedy_tokens(capsys, fixture_weights, expected):
    code, lines, _ = run(
        capsys, AUDIO[0], "--weights", fixture_weights, "--stream", *GREEDY_16
    )
    assert code == 0
    assert [int(token) for token in lines[0].split()] == expected[
        "generate_greedy_ids"
    ].tolist()


def test_stream_text_equals_the_batch_text(capsys, weights_with_tokenizer):
    flags = [
        AUDIO[0],
        "--weights",
        weights_with_tokenizer,
        "--beams",
        "1",
        "--max-new-tokens",
        "12",
    ]
    _, streamed, _ = run(capsys, *flags, "--stream")
    _, plain, _ = run(capsys, *flags)
    assert streamed[0].strip() == plain[0] and plain[0]


def test_batch_equals_one_by_one_in_input_order(capsys, fixture_weights):
    code, batched, _ = run(
        capsys,
        *AUDIO,
        "--weights",
        fixture_weights,
        *GREEDY_16,
        "--batch-size",
        "3",
        "--json",
    )
    assert code == 0
    records = [json.loads(line) for line in batched]
    assert [r["file"] for r in records] == [str(a) for a in AUDIO]
    for audio, record in zip(AUDIO, records):
        _, alone, _ = run(
            capsys,
            audio,
            "--weights",
            fixture_weights,
            *GREEDY_16,
            "--batch-size",
            "1",
            "--json",
        )
        assert json.loads(alone[0])["ids"] == record["ids"]
    # different audio, different output: the comparison has teeth
    assert records[0]["ids"] != records[1]["ids"]


def test_json_fields_with_a_tokenizer(capsys, weights_with_tokenizer):
    code, lines, _ = run(
        capsys,
        AUDIO[0],
        "--weights",
        weights_with_tokenizer,
        "--task",
        "ser",
        "--json",
        "--max-new-tokens",
        "12",
        "--ids",
    )
    assert code == 0
    record = json.loads(lines[0])
    assert record["task"] == "ser" and record["prompt"].startswith(
        "请将音频内容转录成文字记录"
    )
    assert (
        record["audio_s"] == pytest.approx(44314 / SAMPLE_RATE, abs=1e-3)
        and record["decode_s"] > 0
    )
    tokenizer = Tokenizer.from_pretrained(weights_with_tokenizer)
    assert record["raw"] == tokenizer.decode(record["ids"])
    parsed = parse(TASKS["ser"], record["raw"]).to_json()
    # the parsed fields (transcript, labels, issues) are in
    assert {key: record[key] for key in parsed} == parsed


def test_scoring_a_wenet_list_against_its_own_output_gives_zero(
    capsys, weights_with_tokenizer, tmp_path
):
    flags = [
        "--weights",
        weights_with_tokenizer,
        "--max-new-tokens",
        "12",
        "--beams",
        "1",
    ]
    listing = tmp_path / "test.jsonl"
    listing.write_text(
        "".join(
            json.dumps({"key": f"utt{i}", "wav": str(a)}) + "\n"
            for i, a in enumerate(AUDIO[:2])
        )
    )
    code, lines, _ = run(capsys, listing, *flags, "--json")
    transcripts = [json.loads(line)["transcript"] for line in lines]
    assert code == 0 and all(transcripts)
    listing.write_text(
        "".join(
            json.dumps({"key": f"utt{i}", "wav": str(a), "txt": t}) + "\n"
            for i, (a, t) in enumerate(zip(AUDIO, transcripts))
        )
    )
    code, lines, _ = run(capsys, listing, *flags, "--score-only")
    assert (
        code == 0
        and len(lines) == 1
        and lines[0].startswith("WER 0.00%")
        and "over 2 files" in lines[0]
    )
    listing.write_text(
        json.dumps(
            {"key": "utt0", "wav": str(AUDIO[0]), "txt": transcripts[0] + " extra"}
        )
        + "\n"
    )
    code, lines, _ = run(capsys, listing, *flags, "--score-only", "--json")
    summary = json.loads(lines[0])["summary"]
    assert summary["insertions"] == 0 and summary["deletions"] == 1


def test_score_only_counts_a_failed_file_as_all_deletions_and_refuses_nothing(
    capsys, weights_with_tokenizer, tmp_path
):
    """The rule of eval.py score (scoring.score_texts) here too: a file that fails is in the score as all
    deletions, never dropped; references with no word are an error, never WER 0.00 %."""
    flags = [
        "--weights",
        weights_with_tokenizer,
        "--max-new-tokens",
        "4",
        "--beams",
        "1",
    ]
    listing = tmp_path / "test.jsonl"
    rows = [
        ("utt0", str(AUDIO[0]), "a b"),
        ("utt1", str(tmp_path / "absent.wav"), "c d e"),
    ]
    listing.write_text(
        "".join(json.dumps(dict(zip(("key", "wav", "txt"), r))) + "\n" for r in rows)
    )
    code, lines, err = run(capsys, listing, *flags, "--score-only", "--json")
    summary = json.loads(lines[-1])["summary"]
    assert code == 1 and "absent.wav" in err
    assert (
        summary["reference_units"] == 5
        and summary["deletions"] >= 3
        and summary["skipped"] == 1
    )
    listing.write_text(
        json.dumps({"key": "utt0", "wav": str(AUDIO[0]), "txt": ""}) + "\n"
    )
    code, lines, err = run(capsys, listing, *flags, "--score-only")
    last = err.splitlines()[-1]
    assert (
        code == 2
        and lines == []
        and last.startswith("infer.py: error: no score: nothing to score")
    )


def test_a_directory_with_a_corrupt_file_reports_it_and_finishes_the_rest(
    capsys, fixture_weights, tmp_path
):
    for audio in AUDIO[:2]:
        shutil.copy(audio, tmp_path / audio.name)
    (tmp_path / "broken.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk" + bytes(64))
    code, lines, err = run(
        capsys, tmp_path, "--weights", fixture_weights, *GREEDY_16, "--batch-size", "2"
    )
    assert code == 1
    assert len(lines) == 2 and lines[0].startswith(str(tmp_path / "audio.wav") + "\t")
    assert "broken.wav" in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if "broken.wav" in line]) == 1


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--weights", "{missing}", "--task", "asr"], "python convert.py --download"),
        (["--task", "karaoke"], "unknown task 'karaoke'"),
        (["--prompt-ids", "1,x", "--ids"], "--prompt-ids"),
        (["--task", "asr"], "has no tokenizer"),
        (["--task", "ser", "--srt"], "--srt/--vtt need --task srwt"),
    ],
)
def test_usage_errors_exit_2_with_one_line(
    capsys, fixture_weights, tmp_path, argv, message
):
    argv = [a.replace("{missing}", str(tmp_path / "nowhere")) for a in argv]
    argv = argv if "--weights" in argv else argv + ["--weights", str(fixture_weights)]
    code, lines, err = run(capsys, AUDIO[0], *argv)
    assert code == 2 and lines == []
    assert len(err.strip().splitlines()) == 1 and message in err


def test_unreadable_single_file_exits_2(capsys, fixture_weights, tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    code, _, err = run(
        capsys, tmp_path / "empty.wav", "--weights", fixture_weights, *GREEDY_16
    )
    assert code == 2 and "empty.wav" in err and "Traceback" not in err
    code, _, err = run(
        capsys, tmp_path / "absent.wav", "--weights", fixture_weights, *GREEDY_16
    )
    assert (
        code == 2
        and err.strip()
        == f"infer.py: error: {tmp_path / 'absent.wav'}: no such file or directory"
    )


def test_long_audio_is_windowed_decoded_and_joined(capsys, fixture_weights, tmp_path):
    speech = load_audio(AUDIO[0]).numpy()
    pause = np.zeros(SAMPLE_RATE // 2, dtype=np.float32)
    clip = np.concatenate([speech, pause])  # 3.27 s
    long_audio = np.tile(clip, 22)[: 70 * SAMPLE_RATE]  # 70 s
    soundfile.write(tmp_path / "long.wav", long_audio, SAMPLE_RATE, subtype="FLOAT")
    code, lines, _ = run(
        capsys,
        tmp_path / "long.wav",
        "--weights",
        fixture_weights,
        "--json",
        "--prompt-ids",
        PROMPT,
        "--ids",
        "--beams",
        "1",
        "--max-new-tokens",
        "4",
    )
    assert code == 0
    record = json.loads(lines[0])
    windows = record["windows"]
    assert len(windows) == 3 and windows[0][0] == 0 and windows[-1][1] == 70.0
    assert all(a[1] == b[0] for a, b in zip(windows, windows[1:])) and all(
        e - s <= 30 for s, e in windows
    )
    model = OSUM.from_pretrained(fixture_weights, device="cpu")
    wav = load_audio(tmp_path / "long.wav")
    for number, ((start, end), ids) in enumerate(zip(windows, record["ids"])):
        window = wav[round(start * SAMPLE_RATE) : round(end * SAMPLE_RATE)]
        # later windows start in a pause
        assert number == 0 or float(window[:160].abs().max()) < 1e-3
        mel, lens = pad_features([log_mel(window)])
        assert (
            model.generate(
                mel,
                lens,
                [[int(t) for t in PROMPT.split(",")]],
                max_new_tokens=4,
                num_beams=1,
            )[0]
            == ids
        )


def test_subtitles():
    words = [
        Word("hello", 0.3, 0.7),
        Word("world", 0.8, 1.2),
        Word("again", 3.0, 3.5),
        Word("untimed", None, None),
    ]
    srt = subtitles(words, vtt=False)
    assert (
        srt
        == "1\n00:00:00,300 --> 00:00:01,200\nhello world\n\n2\n00:00:03,000 --> 00:00:03,500\nagain\n"
    )
    vtt = subtitles(words, vtt=True)
    assert vtt.startswith("WEBVTT\n\n00:00:00.300 --> 00:00:01.200\nhello world")


def test_list_tasks(capsys):
    code, lines, _ = run(capsys, "--list-tasks")
    assert code == 0 and len(lines) == 12 and lines[1].startswith("srwt")


def test_torchrun_two_ranks_equal_one_process(tmp_path, weights_with_tokenizer):
    """Two gloo ranks share the files by length; rank 0 prints every result in input order and scores all of them,
    the same as one process; a bad file is reported once and the exit code is still 1."""
    import socket
    import subprocess
    import sys
    from pathlib import Path

    (tmp_path / "empty.wav").write_bytes(b"")
    clips = [*AUDIO, FIXTURE_A / "audio_batch_item1.wav", tmp_path / "empty.wav"]
    lines = [
        json.dumps({"key": f"utt{i}", "wav": str(clip), "txt": "ab cd"})
        for i, clip in enumerate(clips)
    ]
    (tmp_path / "list.jsonl").write_text("\n".join(lines) + "\n")
    root = Path(infer.__file__).resolve().parent
    args = [
        str(root / "infer.py"),
        str(tmp_path / "list.jsonl"),
        "--weights",
        str(weights_with_tokenizer),
        "--max-new-tokens",
        "6",
        "--batch-size",
        "2",
    ]
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(port),
    ]

    def both(*extra):
        one = subprocess.run(
            [sys.executable, *args, *extra], capture_output=True, text=True, timeout=300
        )
        two = subprocess.run(
            [*torchrun, *args, *extra], capture_output=True, text=True, timeout=300
        )
        assert one.returncode == two.returncode == 1, two.stderr[-2000:]
        for run in (one, two):
            assert [line for line in run.stderr.splitlines() if "skipped" in line] == [
                line for line in one.stderr.splitlines() if "skipped" in line
            ] and "empty.wav" in run.stderr
        return one.stdout, two.stdout

    one, two = both("--json")
    drop_timing = [
        {k: v for k, v in json.loads(line).items() if k != "decode_s"}
        for line in one.splitlines()
    ]
    assert [
        {k: v for k, v in json.loads(line).items() if k != "decode_s"}
        for line in two.splitlines()
    ] == drop_timing
    # input order
    assert [record.get("key") for record in drop_timing[:4]] == [
        f"utt{i}" for i in range(4)
    ]
    assert (
        drop_timing[4]["error"].startswith(str(tmp_path / "empty.wav"))
        and drop_timing[5]["summary"]["skipped"]
    )
    one, two = both("--score-only")
    assert one == two and one.strip()


def test_a_lone_surrogate_in_a_list_is_printed_escaped(
    capsys, weights_with_tokenizer, tmp_path
):
    """JSON's "\\ud800" is no character: printed as UTF-8 it killed infer.py with nothing said. Keys, texts and
    paths print escaped, and the item with the unreadable path is reported while the others are answered."""
    listing = tmp_path / "list.jsonl"
    listing.write_text(
        '{"key": "a\\ud800", "wav": "%s", "txt": "x\\udfffy"}\n{"key": "b", "wav": "\\ud800.wav"}\n'
        % AUDIO[0],
        encoding="utf-8",
    )
    flags = [
        "--weights",
        weights_with_tokenizer,
        "--max-new-tokens",
        "4",
        "--beams",
        "1",
    ]
    for extra in ([], ["--json"], ["--score-only"]):
        code, lines, err = run(capsys, listing, *flags, *extra)
        assert code == 1 and "\\ud800.wav" in err and "Traceback" not in err, err
        if not extra:
            assert lines[0].startswith("a\\\\ud800\t")  # one_line escapes the backslash
        if extra == ["--json"]:
            assert [json.loads(line).get("key") for line in lines][:2] == [
                "a\\ud800",
                None,
            ]


def test_missing_weights_are_one_message_from_every_front_end(capsys, tmp_path):
    """infer.py said "no OSUM weights", its --serve "has no tokenizer", eval.py run a third thing: one check
    (weights.weights_problem), one message, before anything loads."""
    import eval as eval_cli

    missing = tmp_path / "nonexistent"
    clip, listing = str(AUDIO[0]), tmp_path / "list.jsonl"
    listing.write_text(json.dumps({"key": "a", "wav": clip, "txt": "a b"}) + "\n")
    said = []
    for command, argv in (
        (infer.main, [clip, "--weights", str(missing)]),
        (infer.main, ["--serve", "--weights", str(missing)]),
        (eval_cli.main, ["run", "wenet", str(listing), "--weights", str(missing)]),
    ):
        code = command(argv)
        err = capsys.readouterr().err.splitlines()
        assert code == 2 and len(err) == 1, err
        said.append(err[0].split(": error: ", 1)[1])
    assert said[0] == said[1] == said[2] and said[0].startswith(
        f"no OSUM weights in {missing}/: get them"
    )
