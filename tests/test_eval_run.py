"""`eval.py run` on miniature copies of each public test set's official layout, built from real recordings
(fixture_a's clips, tests/.assets) and decoded end to end through the fixture weights: every utterance decoded, the
keys and references read as the layout says, the resume rule, the refusals."""

import csv
import json
import os

import numpy as np
import pytest
import soundfile
from conftest import FIXTURE_A, ROOT
from test_infer import weights_with_tokenizer  # noqa: F401  (a pytest fixture)

import eval as eval_cli
from osum_min.eval import run as eval_run

CLIPS = [
    FIXTURE_A / "audio.wav",
    FIXTURE_A / "audio_batch_item1.wav",
    ROOT / "tests/.assets/arctic_a0007.wav",
]
FAST = ["--beams", "1", "--max-new-tokens", "3", "--device", "cpu", "--batch-size", "2"]


def clip(number: int) -> np.ndarray:
    return soundfile.read(CLIPS[number % len(CLIPS)], dtype="float32")[0]


def write(path, number: int, fmt: str | None = None, subtype: str | None = None):
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, clip(number), 16000, format=fmt, subtype=subtype)


def text(path, content: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content, encoding="utf-8")


def tsv(path, header: list[str], rows: list[list[str]]):
    text(path, "".join("\t".join(row) + "\n" for row in [header, *rows]))


# Each builder makes the layout under `root` and returns (DATA_DIR, {(subset, key): the reference as scored}).
def librispeech(root):
    split = root / "LibriSpeech" / "test-clean"
    lines = {
        "1089-134686-0000": "HE HOPED THERE WOULD BE STEW",
        "1089-134686-0001": "STUFF IT INTO YOU",
    }
    text(
        split / "1089/134686/1089-134686.trans.txt",
        "".join(f"{k} {t}\n" for k, t in lines.items()),
    )
    text(
        split / "121/121726/121-121726.trans.txt",
        "121-121726-0000 ALSO A POPULAR CONTRIVANCE\n",
    )
    for number, key in enumerate([*lines, "121-121726-0000"]):
        speaker, chapter, _ = key.split("-")
        write(split / speaker / chapter / f"{key}.flac", number)
    return split, {
        ("test-clean", k): t
        for k, t in {**lines, "121-121726-0000": "ALSO A POPULAR CONTRIVANCE"}.items()
    }


def aishell1(root):
    data = root / "data_aishell"
    text(
        data / "transcript/aishell_transcript_v0.8.txt",
        "BAC009S0764W0121 甚至 出现 交易 几乎 停滞 的 情况\n"
        "BAC009S0764W0122 一二线 城市 虽然 也 处于 调整 中\nBAC009S0002W0122 而 对 楼市 成交 抑制 作用 最 大 的 限 购\n",
    )
    write(data / "wav/test/S0764/BAC009S0764W0121.wav", 0)
    write(data / "wav/test/S0764/BAC009S0764W0122.wav", 1)
    # train: not in the test set
    write(data / "wav/train/S0002/BAC009S0002W0122.wav", 2)
    return data, {
        ("test", "BAC009S0764W0121"): "甚至出现交易几乎停滞的情况",
        ("test", "BAC009S0764W0122"): "一二线城市虽然也处于调整中",
    }


def aishell2(root):
    folder = root / "AISHELL-2" / "iOS" / "test"
    # tabs
    text(
        folder / "wav.scp",
        "IT0011W0001\twav/T0055G0013S0001.wav\nIT0011W0002\twav/T0055G0013S0002.wav\n",
    )
    text(folder / "trans.txt", "IT0011W0001 换一首歌\nIT0011W0002 几点了\n")
    write(folder / "wav/T0055G0013S0001.wav", 0)
    write(folder / "wav/T0055G0013S0002.wav", 2)
    return folder.parent, {
        ("test-ios", "IT0011W0001"): "换一首歌",
        ("test-ios", "IT0011W0002"): "几点了",
    }


def wenetspeech(root):
    """One opus file holding three clips one after another, cut into segments by the meta's times."""
    data = root / "WenetSpeech"
    waves = [clip(0), clip(1), clip(2)]
    (data / "audio/test/podcast").mkdir(parents=True)
    soundfile.write(
        data / "audio/test/podcast/X0000.opus",
        np.concatenate(waves),
        16000,
        format="OGG",
        subtype="OPUS",
    )
    bounds = np.cumsum([0] + [len(w) / 16000 for w in waves])
    segments = [
        {
            "sid": f"X0000_S{i:05d}",
            "begin_time": round(bounds[i], 3),
            "end_time": round(bounds[i + 1], 3),
            "text": t,
            "subsets": s,
        }
        for i, (t, s) in enumerate(
            [
                ("今天天气不错", ["TEST_NET"]),
                ("开会了", ["TEST_MEETING"]),
                ("训练数据", ["L", "M"]),
            ]
        )
    ]
    text(
        data / "WenetSpeech.json",
        json.dumps(
            {
                "dataset": "WenetSpeech",
                "audios": [
                    {
                        "aid": "X0000",
                        "path": "audio/test/podcast/X0000.opus",
                        "segments": segments,
                    }
                ],
            },
            ensure_ascii=False,
        ),
    )
    return data, {
        ("test-net", "X0000_S00000"): "今天天气不错",
        ("test-meeting", "X0000_S00001"): "开会了",
    }


def commonvoice(root):
    data = root / "cv-corpus-15.0" / "en"
    rows = [
        ["c1", "common_voice_en_1.mp3", "Hello there."],
        ["c2", "common_voice_en_2.mp3", "Good morning."],
    ]
    tsv(
        data / "test.tsv",
        ["client_id", "path", "sentence", "up_votes"],
        [[*row, "2"] for row in rows],
    )
    for number, row in enumerate(rows):
        write(data / "clips" / row[1], number, "MP3")
    return data, {
        ("test-en", "common_voice_en_1"): "Hello there.",
        ("test-en", "common_voice_en_2"): "Good morning.",
    }


def fleurs(root):
    data = root / "fleurs" / "cmn_hans_cn"
    text(
        data / "test.tsv",
        "1\t10004.wav\t他说，天气很好。\t他说 天气很好\tta shuo\t44000\tMALE\n"
        "2\t10005.wav\t我们走吧。\t我们走吧\two men\t35000\tFEMALE\n",
    )
    write(data / "audio/test/10004.wav", 0)
    write(data / "audio/test/10005.wav", 1)
    return data, {
        ("test-cmn_hans_cn", "10004"): "他说，天气很好。",
        ("test-cmn_hans_cn", "10005"): "我们走吧。",
    }


def covost2(root):
    data = root / "covost"
    tsv(
        data / "covost_v2.en_de.tsv",
        ["path", "sentence", "translation", "client_id", "split"],
        [
            ["cv_en_1.mp3", "Hello.", "Hallo.", "c1", "test"],
            ["cv_en_2.mp3", "Thanks.", "Danke.", "c2", "test"],
            ["cv_en_3.mp3", "Bye.", "Tschüss.", "c3", "train"],
        ],
    )
    for number in range(3):
        write(data / f"clips/cv_en_{number + 1}.mp3", number, "MP3")
    return data, {("en-de", "cv_en_1"): "Hallo.", ("en-de", "cv_en_2"): "Danke."}


def meld(root):
    data = root / "MELD.Raw"
    data.mkdir(parents=True)
    with open(data / "test_sent_emo.csv", "w", encoding="utf-8", newline="") as handle:
        rows = csv.writer(handle)
        rows.writerow(
            [
                "Sr No.",
                "Utterance",
                "Speaker",
                "Emotion",
                "Sentiment",
                "Dialogue_ID",
                "Utterance_ID",
            ]
        )
        rows.writerow(["1", "Oh, great!", "Chandler", "joy", "positive", "0", "0"])
        rows.writerow(["2", "Why, why?", "Ross", "sadness", "negative", "0", "1"])
    write(data / "wav/dia0_utt0.wav", 0)
    write(data / "wav/dia0_utt1.wav", 1)
    return data, {("test", "dia0_utt0"): "<happy>", ("test", "dia0_utt1"): "<sad>"}


def vocalsound(root):
    data = root / "vocalsound_16k"
    write(data / "audio_16k/f0003_0_cough.wav", 0)
    write(data / "audio_16k/m0012_1_laughter.wav", 1)
    return data, {
        ("test", "f0003_0_cough"): "<cough>",
        ("test", "m0012_1_laughter"): "<laugh>",
    }


def qwen2_audio(root):
    for number, name in enumerate(["a.wav", "b.wav", "c.wav"]):
        write(root / "audio" / name, number)
    lines = [
        {
            "audio": "audio/a.wav",
            "prompt": "<|audio_bos|><|AUDIO|><|audio_eos|>Detect the language and recognize "
            "the speech: <|en|>",
            "source": "librispeech_test_clean",
            "gt": "HELLO WORLD",
        },
        {
            "audio": "audio/b.wav",
            "prompt": "<|audio_bos|><|AUDIO|><|audio_eos|>Recognize the emotion with "
            "keywords in English:",
            "source": "meld",
            "gt": "sad",
        },
        {
            "audio": "audio/c.wav",
            "prompt": "<|audio_bos|><|AUDIO|><|audio_eos|>Detect the language and recognize "
            "the speech: <|en|>",
            "source": "librispeech_test_clean",
            "gt": "GOOD BYE",
        },
    ]
    text(root / "qwen2audio.jsonl", "".join(json.dumps(line) + "\n" for line in lines))
    return root / "qwen2audio.jsonl", {
        ("librispeech_test_clean", "librispeech_test_clean-000001"): "HELLO WORLD",
        ("meld", "meld-000002"): "sad",
        ("librispeech_test_clean", "librispeech_test_clean-000003"): "GOOD BYE",
    }


def wenet(root):
    for number in range(3):
        write(root / f"wav/{number}.wav", number)
    lines = [
        {"key": "u0", "wav": "wav/0.wav", "txt": "你好", "task": "<TRANSCRIBE>"},
        {
            "key": "u1",
            "wav": "wav/1.wav",
            "txt": "你好<HAPPY>",
            "task": "<TRANSCRIBE> <EMOTION>",
        },
        {
            "key": "u2",
            "wav": "wav/2.wav",
            "txt": "你<0.1, 0.3>好<0.3, 0.6>",
            "task": "<TRANSCRIBE> <ALIGN>",
        },
    ]
    text(
        root / "test.jsonl",
        "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines),
    )
    return root / "test.jsonl", {
        ("asr", "u0"): "你好",
        ("ser", "u1"): "<HAPPY>",
        ("srwt", "u2"): "你好",
    }


LAYOUTS = {
    "librispeech": librispeech,
    "aishell1": aishell1,
    "aishell2": aishell2,
    "wenetspeech": wenetspeech,
    "commonvoice": commonvoice,
    "fleurs": fleurs,
    "covost2": covost2,
    "meld": meld,
    "vocalsound": vocalsound,
    "qwen2-audio": qwen2_audio,
    "wenet": wenet,
}


def run(capsys, bench, data, weights, out, *flags):
    code = eval_cli.main(
        [
            "run",
            bench,
            str(data),
            "--weights",
            str(weights),
            "--out",
            str(out),
            *FAST,
            *flags,
        ]
    )
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def records(out) -> list[dict]:
    return [
        json.loads(line)
        for line in (out / "records.jsonl").read_text(encoding="utf-8").splitlines()
    ]


def test_every_reader_is_tested():
    assert set(LAYOUTS) == set(eval_cli.READERS)


@pytest.mark.parametrize("bench", LAYOUTS)
# noqa: F811
def test_every_utterance_of_the_layout_is_decoded_and_scored(
    bench, capsys, weights_with_tokenizer, tmp_path
):
    pytest.importorskip("sacrebleu")
    data, expected = LAYOUTS[bench](tmp_path / "data")
    code, table, err = run(
        capsys, bench, data, weights_with_tokenizer, tmp_path / "out"
    )
    assert code == 0, err
    found = records(tmp_path / "out")
    assert {(r["subset"], r["key"]): r["ref"] for r in found} == expected
    assert all(r["error"] is None and r["hyp"] is not None for r in found)
    ref_lines = (tmp_path / "out/ref.txt").read_text(encoding="utf-8").splitlines()
    hyp_lines = (tmp_path / "out/hyp.txt").read_text(encoding="utf-8").splitlines()
    assert [line.split(" ", 1)[0] for line in ref_lines] == [r["key"] for r in found]
    assert [line.split(" ", 1)[0] for line in hyp_lines] == [r["key"] for r in found]
    results = json.loads((tmp_path / "out/results.json").read_text(encoding="utf-8"))
    assert {row["subset"] for row in results["rows"]} == {
        subset for subset, _ in expected
    }
    assert all(
        row["value"] is not None and row["utterances"] >= 1 for row in results["rows"]
    )
    assert (
        table.splitlines()[0].startswith("| task | dataset | metric | ours |")
        and len(table.splitlines()) >= 3
    )


def test_srwt_rows_carry_the_word_time_error(capsys, weights_with_tokenizer, tmp_path):  # noqa: F811
    data, _ = wenet(tmp_path / "data")
    assert run(capsys, "wenet", data, weights_with_tokenizer, tmp_path / "out")[0] == 0
    rows = {
        row["subset"]: row
        for row in json.loads((tmp_path / "out/results.json").read_text())["rows"]
    }
    assert "timing" not in rows["asr"] and rows["srwt"]["timing"]["utterances"] == 1
    # 你, 好: the reference's words, times stripped
    assert rows["srwt"]["timing"]["reference_units"] == 2
    references = tmp_path / "times.jsonl"
    text(
        references,
        json.dumps({"key": "u2", "words": [{"word": "你好", "start": 0.1, "end": 0.6}]})
        + "\n",
    )
    assert (
        run(
            capsys,
            "wenet",
            data,
            weights_with_tokenizer,
            tmp_path / "out2",
            "--word-times",
            str(references),
        )[0]
        == 0
    )
    rows = {
        row["subset"]: row
        for row in json.loads((tmp_path / "out2/results.json").read_text())["rows"]
    }
    assert rows["srwt"]["timing"]["utterances"] == 1
    text(references, "not json\n")
    code, _, err = run(
        capsys,
        "wenet",
        data,
        weights_with_tokenizer,
        tmp_path / "out3",
        "--word-times",
        str(references),
    )
    assert code == 2 and "times.jsonl" in err


def test_published_figures_reach_the_table(capsys, weights_with_tokenizer, tmp_path):  # noqa: F811
    data, _ = librispeech(tmp_path / "data")
    code, table, _ = run(
        capsys, "librispeech", data, weights_with_tokenizer, tmp_path / "out"
    )
    row = next(line for line in table.splitlines() if "test-clean" in line)
    # OSUM v2 and Qwen2-Audio, from osum_min/eval/published.json
    assert code == 0 and "| 2.19 | 1.6 |" in row


# noqa: F811
def test_an_interrupted_run_decodes_only_the_rest_and_ends_with_the_same_files(
    capsys, weights_with_tokenizer, tmp_path, monkeypatch
):
    data, expected = librispeech(tmp_path / "data")
    flags = ["--batch-size", "1"]
    assert (
        run(
            capsys,
            "librispeech",
            data,
            weights_with_tokenizer,
            tmp_path / "whole",
            *flags,
        )[0]
        == 0
    )
    decoded = []
    original_run = eval_run.Pipeline.run

    def counting_run(self, requests, *args, **kwargs):
        for index, answer in original_run(self, requests, *args, **kwargs):
            decoded.append(requests[index].name.split()[0])
            yield index, answer

    monkeypatch.setattr(eval_run.Pipeline, "run", counting_run)
    out = tmp_path / "resumed"
    assert (
        run(
            capsys,
            "librispeech",
            data,
            weights_with_tokenizer,
            out,
            *flags,
            "--limit",
            "2",
        )[0]
        == 0
    )
    assert len(decoded) == 2 and len(records(out)) == 2
    # killed while writing the second record
    with open(out / "records.jsonl", "rb+") as handle:
        handle.truncate(len(handle.read()) - 20)
    decoded.clear()
    assert run(capsys, "librispeech", data, weights_with_tokenizer, out, *flags)[0] == 0
    # the torn one and the one never started
    assert sorted(decoded) == sorted(key for _, key in expected)[1:]
    for name in ("records.jsonl", "hyp.txt", "ref.txt", "results.json", "results.md"):
        assert (out / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), (
            name
        )


# noqa: F811
def test_ctrl_c_then_the_same_command_finishes_the_run(
    capsys, weights_with_tokenizer, tmp_path, monkeypatch
):
    data, expected = aishell1(tmp_path / "data")
    assert (
        run(
            capsys,
            "aishell1",
            data,
            weights_with_tokenizer,
            tmp_path / "whole",
            "--batch-size",
            "1",
        )[0]
        == 0
    )
    original_run = eval_run.Pipeline.run

    def interrupted_run(self, requests, *args, **kwargs):
        for index, answer in original_run(self, requests, *args, **kwargs):
            yield index, answer
            raise KeyboardInterrupt  # after the first utterance's record is written

    monkeypatch.setattr(eval_run.Pipeline, "run", interrupted_run)
    out = tmp_path / "resumed"
    code, _, err = run(
        capsys, "aishell1", data, weights_with_tokenizer, out, "--batch-size", "1"
    )
    assert (
        code == 130
        and "resumes" in err
        and len(records(out)) == 1
        and not (out / "results.json").exists()
    )
    monkeypatch.setattr(eval_run.Pipeline, "run", original_run)
    assert (
        run(capsys, "aishell1", data, weights_with_tokenizer, out, "--batch-size", "1")[
            0
        ]
        == 0
    )
    assert len(records(out)) == len(expected)
    for name in ("records.jsonl", "hyp.txt", "ref.txt", "results.json", "results.md"):
        assert (out / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), (
            name
        )


# noqa: F811
def test_a_missing_clip_is_reported_and_counted_and_the_rest_is_decoded(
    capsys, weights_with_tokenizer, tmp_path
):
    data, expected = librispeech(tmp_path / "data")
    (data / "1089/134686/1089-134686-0001.flac").unlink()
    code, table, err = run(
        capsys, "librispeech", data, weights_with_tokenizer, tmp_path / "out"
    )
    assert code == 1 and "1089-134686-0001" in err
    found = {r["key"]: r for r in records(tmp_path / "out")}
    assert (
        found.keys() == {key for _, key in expected}
        and found["1089-134686-0001"]["error"]
    )
    assert [r["key"] for r in found.values() if r["error"] is None] == [
        line.split()[0] for line in (tmp_path / "out/hyp.txt").read_text().splitlines()
    ]
    [row] = json.loads((tmp_path / "out/results.json").read_text())["rows"]
    assert [f["key"] for f in row["failed"]] == ["1089-134686-0001"] and row[
        "value"
    ] is not None
    assert table.splitlines()[2].endswith("| 3 | 1 |")
    # the failed utterance is in the score as all deletions (scoring.score_texts' rule), and said so
    missing = len(expected[("test-clean", "1089-134686-0001")].split())
    assert row["score"]["missing"] == 1 and row["score"]["D"] >= missing
    assert row["score"]["N"] == sum(len(text.split()) for text in expected.values())
    assert "1 of 3 references have no hypothesis: each counted as all deletions" in err


@pytest.mark.parametrize(
    "flags, named",
    [
        (["--task", "ser"], "task"),
        (["--prompt", "Say it."], "prompt"),
        (["--max-new-tokens", "5"], "decoding"),
        (["--metric", "cer"], "metric"),
        (["--protocol", "qwen2-audio", "--language", "en"], "protocol"),
    ],
)
# noqa: F811
def test_resuming_into_an_out_of_another_run_is_refused_naming_what_differs(
    flags, named, capsys, weights_with_tokenizer, tmp_path
):
    data, _ = librispeech(tmp_path / "data")
    out = tmp_path / "out"
    assert (
        run(capsys, "librispeech", data, weights_with_tokenizer, out, "--limit", "1")[0]
        == 0
    )
    before = (out / "records.jsonl").read_bytes()
    code, table, err = run(
        capsys, "librispeech", data, weights_with_tokenizer, out, *flags
    )
    assert code == 2 and table == "" and len(err.splitlines()) == 1, err
    assert err.startswith(
        f"eval.py: error: {out}: holds another run's records ({named} "
    )
    assert (out / "records.jsonl").read_bytes() == before
    # other data (a reference changed) and other weights are other runs too
    text = next(data.rglob("*.trans.txt"))
    text.write_text(text.read_text().replace("\n", " MORE\n", 1))
    code, _, err = run(capsys, "librispeech", data, weights_with_tokenizer, out)
    assert code == 2 and "utterances sha256" in err


# noqa: F811
def test_records_without_a_fingerprint_are_refused(
    capsys, weights_with_tokenizer, tmp_path
):
    data, _ = librispeech(tmp_path / "data")
    out = tmp_path / "out"
    out.mkdir()
    (out / "records.jsonl").write_text("")
    code, _, err = run(capsys, "librispeech", data, weights_with_tokenizer, out)
    assert code == 2 and "no run.json" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize(
    "bad",
    [b"", b"null", b"[1, 2]", b'{"subset": 5}', b"\xff\xfe garbage", b"}{", b'"text"'],
)
# noqa: F811
def test_a_corrupted_records_line_is_named_and_its_utterance_decoded_again(
    bad, capsys, weights_with_tokenizer, tmp_path
):
    data, expected = librispeech(tmp_path / "data")
    whole, out = tmp_path / "whole", tmp_path / "out"
    assert run(capsys, "librispeech", data, weights_with_tokenizer, whole)[0] == 0
    assert run(capsys, "librispeech", data, weights_with_tokenizer, out)[0] == 0
    lines = (out / "records.jsonl").read_bytes().split(b"\n")
    lines[1] = bad  # the middle record
    (out / "records.jsonl").write_bytes(b"\n".join(lines))
    code, _, err = run(capsys, "librispeech", data, weights_with_tokenizer, out)
    assert code == 0 and f"{out / 'records.jsonl'}:2: not a record" in err, err
    assert "Traceback" not in err
    for name in ("records.jsonl", "hyp.txt", "ref.txt", "results.json", "results.md"):
        assert (out / name).read_bytes() == (whole / name).read_bytes(), name


@pytest.mark.parametrize("where", ["a-file", "read-only"])
# noqa: F811
def test_an_out_that_cannot_be_written_is_refused_before_decoding(
    where, capsys, weights_with_tokenizer, tmp_path, monkeypatch
):
    data, _ = librispeech(tmp_path / "data")
    out = tmp_path / "out"
    if where == "a-file":
        out.write_text("in the way")
    else:
        out.mkdir()
        out.chmod(0o500)
        if os.access(out, os.W_OK):
            pytest.skip("running as a user who writes anywhere (root)")
    monkeypatch.setattr(eval_run, "decode", None)  # never reached
    code, table, err = run(capsys, "librispeech", data, weights_with_tokenizer, out)
    assert (
        code == 2
        and table == ""
        and err.startswith(f"eval.py: error: {out}: cannot write")
    )


# noqa: F811
def test_a_full_disk_at_the_end_keeps_the_records_and_the_same_command_finishes(
    capsys, weights_with_tokenizer, tmp_path, monkeypatch
):
    """The result files are written whole or not at all: a failed write leaves the decoded records intact."""
    data, _ = librispeech(tmp_path / "data")
    out = tmp_path / "out"
    real_replace = os.replace

    def full(src, dst):
        if not str(dst).endswith("run.json"):
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", full)
    code, _, err = run(capsys, "librispeech", data, weights_with_tokenizer, out)
    assert code == 2 and "cannot write" in err and "No space left on device" in err
    assert len(records(out)) == 3  # the appended records survived
    monkeypatch.setattr(os, "replace", real_replace)
    decoded = []
    monkeypatch.setattr(
        eval_run.Pipeline,
        "run",
        lambda self, requests, *a, **k: decoded.extend(requests) or iter(()),
    )
    assert (
        run(capsys, "librispeech", data, weights_with_tokenizer, out)[0] == 0
        and decoded == []
    )


@pytest.mark.parametrize("bench", LAYOUTS)
# noqa: F811
def test_a_folder_without_the_layout_is_refused_naming_the_file(
    bench, capsys, weights_with_tokenizer, tmp_path
):
    (tmp_path / "empty").mkdir()
    code, out, err = run(
        capsys, bench, tmp_path / "empty", weights_with_tokenizer, tmp_path / "out"
    )
    assert (
        code == 2
        and not out
        and len(err.splitlines()) == 1
        and str(tmp_path / "empty") in err
    )
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "flags, problem",
    [
        (["--device", "meta"], "--device meta: the model runs on cpu"),
        (["--batch-size", "0"], "--batch-size must be at least 1, got 0"),
        (["--limit", "-3"], "--limit must be at least 1, got -3"),
    ],
)
# noqa: F811
def test_bad_flags_are_one_line_before_anything_is_read(
    capsys, weights_with_tokenizer, tmp_path, flags, problem
):
    code, out, err = run(
        capsys,
        "librispeech",
        tmp_path / "absent",
        weights_with_tokenizer,
        tmp_path / "out",
        *flags,
    )
    assert code == 2 and not out and err.startswith(f"eval.py: error: {problem}")
    assert len(err.splitlines()) == 1 and not (tmp_path / "out").exists()


# noqa: F811
def test_a_transcript_file_of_the_wrong_shape_is_refused(
    capsys, weights_with_tokenizer, tmp_path
):
    data, _ = commonvoice(tmp_path / "data")
    text(data / "test.tsv", "client_id\tfile\tsentence\n")
    code, _, err = run(
        capsys, "commonvoice", data, weights_with_tokenizer, tmp_path / "out"
    )
    assert code == 2 and "test.tsv" in err and "path" in err


# noqa: F811
def test_a_qwen2_audio_list_without_a_known_language_asks_for_one(
    capsys, weights_with_tokenizer, tmp_path
):
    write(tmp_path / "a.wav", 0)
    text(
        tmp_path / "eval.jsonl",
        json.dumps(
            {
                "audio": "a.wav",
                "prompt": "Transcribe:",
                "source": "mystery",
                "gt": "hello",
            }
        )
        + "\n",
    )
    code, _, err = run(
        capsys,
        "qwen2-audio",
        tmp_path / "eval.jsonl",
        weights_with_tokenizer,
        tmp_path / "out",
    )
    assert code == 2 and "mystery" in err and "--language" in err
    code, _, err = run(
        capsys,
        "qwen2-audio",
        tmp_path / "eval.jsonl",
        weights_with_tokenizer,
        tmp_path / "out",
        "--language",
        "en",
    )
    assert code == 0, err


def test_weights_without_a_tokenizer_are_refused(capsys, fixture_weights, tmp_path):
    data, _ = librispeech(tmp_path / "data")
    code, _, err = run(capsys, "librispeech", data, fixture_weights, tmp_path / "out")
    assert code == 2 and "tokenizer" in err


# noqa: F811
def test_torchrun_two_ranks_write_the_files_of_one_process(
    capsys, weights_with_tokenizer, tmp_path
):
    """Each rank appends its share to its own records file; rank 0 merges them into the files one process writes."""
    import socket
    import subprocess
    import sys

    data, _ = wenet(tmp_path / "data")
    assert (
        run(
            capsys,
            "wenet",
            data,
            weights_with_tokenizer,
            tmp_path / "one",
            "--batch-size",
            "1",
        )[0]
        == 0
    )
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    two = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(port),
            str(ROOT / "eval.py"),
            "run",
            "wenet",
            str(data),
            "--weights",
            str(weights_with_tokenizer),
            "--out",
            str(tmp_path / "two"),
            *FAST,
            "--batch-size",
            "1",
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert two.returncode == 0, two.stderr[-2000:]
    assert sorted(path.name for path in (tmp_path / "two").iterdir()) == [
        "hyp.txt",
        "records.jsonl",
        "ref.txt",
        "results.json",
        "results.md",
        "run.json",
    ]
    for name in ("records.jsonl", "hyp.txt", "ref.txt", "results.json", "results.md"):
        assert (tmp_path / "two" / name).read_bytes() == (
            tmp_path / "one" / name
        ).read_bytes(), name


def layout_error(bench, data) -> str:
    """read_benchmark's one-line refusal of `data`."""
    with pytest.raises(eval_cli.LayoutError) as caught:
        eval_cli.read_benchmark(bench, data)
    message = str(caught.value)
    assert "\n" not in message and "Traceback" not in message
    return message


# vocalsound: names only
@pytest.mark.parametrize("bench", sorted(set(LAYOUTS) - {"vocalsound"}))
def test_a_non_utf8_line_in_any_layout_file_is_one_line_naming_the_file(
    bench, tmp_path
):
    data, _ = LAYOUTS[bench](tmp_path / "data")
    root = data if data.is_dir() else data.parent
    files = sorted(
        p
        for p in root.rglob("*")
        if p.suffix in (".txt", ".tsv", ".csv", ".json", ".jsonl", ".scp")
    )
    for path in files:
        lines = path.read_bytes().split(b"\n")
        # a line in the middle, not UTF-8
        lines.insert(1, "caf\xe9 \xff".encode("latin-1"))
        original = path.read_bytes()
        path.write_bytes(b"\n".join(lines))
        message = layout_error(bench, data)
        assert str(path) in message and "not UTF-8" in message, message
        path.write_bytes(original)


@pytest.mark.parametrize(
    "segment_or_audios, said",
    [
        (
            {"begin_time": 0, "end_time": 1, "text": "好", "subsets": ["TEST_NET"]},
            "'sid' is null",
        ),
        (
            {
                "sid": 5,
                "begin_time": 0,
                "end_time": 1,
                "text": "好",
                "subsets": ["TEST_NET"],
            },
            "'sid' is 5",
        ),
        (
            {
                "sid": "a",
                "begin_time": "0",
                "end_time": 1,
                "text": "好",
                "subsets": ["TEST_NET"],
            },
            "begin_time",
        ),
        (
            {
                "sid": "a",
                "begin_time": 0,
                "end_time": 1,
                "text": "好",
                "subsets": "TEST_NET",
            },
            "subsets",
        ),
        ("a segment", "segments[0]: not an object"),
        ({"audios": {"path": "x"}}, '"audios" is dict'),
        ({"audios": ["x.opus"]}, 'audios[0]: not an object with a "path"'),
        (
            {"audios": [{"path": "x.opus", "segments": "none"}]},
            '"segments" is not a list',
        ),
        ({"audios": [{"path": 5}]}, 'audios[0]: not an object with a "path"'),
        ([1, 2], "not WenetSpeech's meta"),
    ],
)
def test_a_wenetspeech_meta_of_the_wrong_shape_is_one_line(
    segment_or_audios, said, tmp_path
):
    data, _ = wenetspeech(tmp_path / "data")
    meta = data / "WenetSpeech.json"
    if (
        isinstance(segment_or_audios, dict)
        and "audios" in segment_or_audios
        or isinstance(segment_or_audios, list)
    ):
        content = segment_or_audios
    else:
        content = json.loads(meta.read_text(encoding="utf-8"))
        content["audios"][0]["segments"].insert(0, segment_or_audios)
    meta.write_text(json.dumps(content), encoding="utf-8")
    message = layout_error("wenetspeech", data)
    assert str(meta) in message and said in message, message


DEEP = '{"key": "u9", "wav": ' + "[" * 100_000 + "]" * 100_000 + ', "txt": "x"}'


@pytest.mark.parametrize("bench", ["wenet", "qwen2-audio"])
@pytest.mark.parametrize(
    "line, said",
    [
        (DEEP, "nested too deeply"),
        (
            '{"key": "u9", "wav": 5, "txt": "x", "audio": 5, "prompt": "p", "source": "s", "gt": "x"}',
            "is 5",
        ),
        ("null", "not a"),
        ('["key", "wav"]', "not a"),
        ('{"key": "u9"', "not a"),
    ],
)
def test_a_bad_json_list_line_is_one_line_naming_the_line(bench, line, said, tmp_path):
    data, _ = LAYOUTS[bench](tmp_path / "data")
    lines = data.read_text(encoding="utf-8").splitlines()
    lines.insert(1, line)
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    message = layout_error(bench, data)
    assert f"{data}:2" in message and said in message, message[:300]


@pytest.mark.parametrize(
    "how", ["symlinked speaker folder", "line twice", "kaldi key twice"]
)
def test_a_key_reachable_twice_is_refused_naming_both_places(how, tmp_path):
    if how == "symlinked speaker folder":
        data, _ = librispeech(tmp_path / "data")
        (data / "1089-again").symlink_to(data / "1089")
        bench, places = (
            "librispeech",
            ["1089/134686/1089-134686-0000.flac", "1089-again/134686"],
        )
    elif how == "line twice":
        data, _ = wenet(tmp_path / "data")
        data.write_text(data.read_text(encoding="utf-8") * 2, encoding="utf-8")
        bench, places = "wenet", ["u0", "both"]
    else:
        data, _ = aishell2(tmp_path / "data")
        trans = next(data.rglob("trans.txt"))
        trans.write_text(trans.read_text(encoding="utf-8") * 2, encoding="utf-8")
        bench, places = "aishell2", [f"{trans}:", "given twice (also line 1)"]
    message = layout_error(bench, data)
    assert all(place in message for place in places), message


# noqa: F811
def test_a_lone_surrogate_in_a_key_or_text_is_written_escaped(
    capsys, weights_with_tokenizer, tmp_path
):
    """JSON's "\\ud800" is no character: printed or written as UTF-8 it killed the run with nothing said."""
    data, _ = wenet(tmp_path / "data")
    lines = data.read_text(encoding="utf-8").splitlines()
    lines[0] = (
        lines[0].replace('"u0"', '"u0\\ud800"').replace('"你好"', '"你\\udfff好"')
    )
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    code, _, err = run(capsys, "wenet", data, weights_with_tokenizer, tmp_path / "out")
    assert code == 0, err
    assert "u0\\ud800 你\\udfff好" in (tmp_path / "out/ref.txt").read_text(
        encoding="utf-8"
    )
