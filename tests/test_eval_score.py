"""`eval.py score` and `scoring.score_texts` give the figures the original tools printed for the pairs in
tests/fixtures/scoring (a copy of shared/osum_reference/scoring, whose README says how each figure was made):
OSUM's compute-wer.py --char=1, compute-cer.py and compute-acc.py as percentages to 0.01 with N, C, S, D, I exact;
Qwen2-Audio's compute_wer as a fraction to 1e-6; sacrebleu's BLEU to 0.01."""

import json
import os
import sys
from pathlib import Path

import pytest

import eval as eval_command
from osum_min.eval.scoring import score_texts

FIXTURES = Path(__file__).parent / "fixtures" / "scoring"
FIGURES = json.loads((FIXTURES / "figures.json").read_text(encoding="utf-8"))
OSUM = [name for name in FIGURES["osum"] if not name.startswith("tags:")]


def key_text(path: Path) -> dict[str, str]:
    return eval_command.read_key_text(path)


def qwen_rows(name: str) -> tuple[dict[str, str], dict[str, str]]:
    rows = [
        json.loads(line)
        for line in (FIXTURES / name).read_text(encoding="utf-8").splitlines()
    ]
    return {row["key"]: row["gt"] for row in rows}, {
        row["key"]: row["response"] for row in rows
    }


def run_score(capsys, *argv) -> tuple[int, list[str]]:
    code = eval_command.main(["score", *map(str, argv)])
    captured = capsys.readouterr()
    # stdout's last line (the JSON) stays last
    return (
        code,
        captured.err.splitlines() + captured.out.splitlines(),
    )


def score_tags(capsys, png) -> tuple[int, list[str]]:
    """eval.py score on the tagged fixture pair, its confusion matrix drawn to `png`."""
    tags = (FIXTURES / "tags.ref", FIXTURES / "tags.hyp")
    return run_score(capsys, *tags, "--metric", "acc", "--confusion-png", png)


def assert_osum_lines(result: dict, expected: dict) -> None:
    lines = {name: line for name, line in result.items() if isinstance(line, dict)}
    assert ["Overall", *lines] == list(expected)  # the original's lines, in its order
    overall = {"percent": result["value"], **{k: result[k] for k in "NCSDI"}}
    for name, line in {"Overall": overall, **lines}.items():
        assert line["percent"] == pytest.approx(
            expected[name]["percent"], abs=0.005 + 1e-9
        ), name
        assert {k: line[k] for k in "NCSDI"} == {
            k: expected[name][k] for k in "NCSDI"
        }, name


@pytest.mark.parametrize("name", OSUM)
def test_osum_error_rates_equal_the_original_tools(name, capsys):
    pair, tool = name.split(":")
    metric = "cer" if tool == "compute-cer.py" else "wer"
    refs, hyps = key_text(FIXTURES / f"{pair}.ref"), key_text(FIXTURES / f"{pair}.hyp")
    assert_osum_lines(score_texts(refs, hyps, "osum", metric), FIGURES["osum"][name])
    code, out = run_score(
        capsys, FIXTURES / f"{pair}.ref", FIXTURES / f"{pair}.hyp", "--metric", metric
    )
    assert code == 0
    assert_osum_lines(json.loads(out[-1]), FIGURES["osum"][name])
    assert out[0].split()[:2] == [
        "Overall",
        f"{FIGURES['osum'][name]['Overall']['percent']:.2f}",
    ]


def test_osum_label_accuracy_equals_compute_acc(capsys, tmp_path):
    expected = FIGURES["osum"]["tags:compute-acc.py"]
    refs, hyps = key_text(FIXTURES / "tags.ref"), key_text(FIXTURES / "tags.hyp")
    result = score_texts(refs, hyps, "osum", "acc")
    assert result["value"] / 100 == pytest.approx(expected, abs=1e-12)
    # extra keys still count in the division
    assert result["total"] == len(hyps) > len(set(hyps) & set(refs))
    assert (
        sum(result["confusion"][k][k] for k in range(len(result["labels"])))
        == result["correct"]
    )
    code, out = score_tags(capsys, tmp_path / "confusion.png")
    assert code == 0 and json.loads(out[-1])["value"] / 100 == pytest.approx(
        expected, abs=1e-12
    )
    assert any(line.startswith("<HAPPY>") for line in out)  # the text confusion table


def test_the_confusion_matrix_png(capsys, tmp_path):
    pytest.importorskip(
        "matplotlib", reason="the PNG needs matplotlib (the [plot] extra)"
    )
    code, _ = score_tags(capsys, tmp_path / "confusion.png")
    assert code == 0 and (tmp_path / "confusion.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("language", ["en", "zh", "yue", "fr"])
def test_qwen2_audio_wer_equals_its_compute_wer(language, capsys, tmp_path):
    for module in ("whisper", "zhconv", "sacrebleu"):
        pytest.importorskip(module, reason="the [eval] extra")
    expected = FIGURES["qwen2_audio"][f"wer_{language}"]
    refs, hyps = qwen_rows(f"qwen2_audio_asr_{language}.jsonl")
    result = score_texts(refs, hyps, "qwen2-audio", "wer", language)
    assert result["value"] / 100 == pytest.approx(expected, abs=1e-6)
    assert result["S"] + result["D"] + result["I"] == round(expected * result["N"])
    ref_path, hyp_path = tmp_path / "ref", tmp_path / "hyp"
    ref_path.write_text(
        "".join(f"{k} {v}\n" for k, v in refs.items()), encoding="utf-8"
    )
    hyp_path.write_text(
        "".join(f"{k} {v}\n" for k, v in hyps.items()), encoding="utf-8"
    )
    code, out = run_score(
        capsys, ref_path, hyp_path, "--protocol", "qwen2-audio", "--language", language
    )
    assert code == 0 and json.loads(out[-1])["value"] / 100 == pytest.approx(
        expected, abs=1e-6
    )


@pytest.mark.parametrize("tokenize", ["13a", "zh"])
def test_bleu_equals_sacrebleu_as_qwen2_audio_runs_it(tokenize, capsys, tmp_path):
    pytest.importorskip("sacrebleu", reason="the [eval] extra")
    expected = FIGURES["qwen2_audio"][f"bleu_{tokenize}"]
    refs, hyps = qwen_rows(f"qwen2_audio_bleu_{tokenize}.jsonl")
    assert score_texts(refs, hyps, "qwen2-audio", "bleu", bleu_tokenize=tokenize)[
        "value"
    ] == pytest.approx(expected, abs=0.01)
    ref_path, hyp_path = tmp_path / "ref", tmp_path / "hyp"
    ref_path.write_text(
        "".join(f"{k} {v}\n" for k, v in refs.items()), encoding="utf-8"
    )
    hyp_path.write_text(
        "".join(f"{k} {v}\n" for k, v in hyps.items()), encoding="utf-8"
    )
    code, out = run_score(
        capsys,
        ref_path,
        hyp_path,
        "--protocol",
        "qwen2-audio",
        "--metric",
        "bleu",
        "--bleu-tokenize",
        tokenize,
    )
    assert code == 0 and json.loads(out[-1])["value"] == pytest.approx(
        expected, abs=0.01
    )


def test_keys_without_text_bom_and_a_missing_hypothesis_is_all_deletions(
    tmp_path, capsys
):
    """A key-only line is an empty text (all its reference words deleted); a BOM is not part of the first key;
    a reference without a hypothesis is all deletions too (compute-wer.py drops it, which flatters a run that lost
    outputs) and eval.py says how many; a hypothesis key the reference lacks is not scored."""
    ref, hyp = tmp_path / "ref", tmp_path / "hyp"
    ref.write_bytes("\ufeffa HELLO WORLD\nb 你好\nc only here\n".encode("utf-8"))
    hyp.write_text("a hello world\nb\nz extra words\n", encoding="utf-8")
    result = score_texts(key_text(ref), key_text(hyp))
    assert (result["N"], result["C"], result["D"], result["utterances"]) == (6, 2, 4, 3)
    assert result["missing"] == 1
    code, out = run_score(capsys, ref, hyp)
    assert (
        code == 0
        and "1 of 3 references have no hypothesis: each counted as all deletions"
        in out[0]
    )


NOTHING = {
    "empty hyp": ("a hello\n", ""),
    "empty ref": ("", "a hello\n"),
    "no key in common": ("a hello\nb world\n", "c hello\nd world\n"),
    "key-only refs": ("a\nb\n", "a hello\nb world\n"),
    "key-only both": ("a\nb\n", "a\nb\n"),
    "blank lines only": ("\n \n\t\n", "\n\n"),
    "punctuation only": ("a ，。\n", "a hello\n"),
}


@pytest.mark.parametrize("metric", ["wer", "cer", "acc", "bleu"])
@pytest.mark.parametrize("case", NOTHING)
def test_nothing_to_score_is_an_error_never_a_figure(case, metric, tmp_path, capsys):
    """N=0 (no line, no key in common, no reference word) is one line and exit 2 whatever the metric; never
    `Overall 0.00 %`, never sacrebleu's traceback."""
    if metric == "bleu":
        pytest.importorskip("sacrebleu", reason="BLEU needs the [eval] extra")
    ref, hyp = tmp_path / "ref", tmp_path / "hyp"
    ref.write_text(NOTHING[case][0], encoding="utf-8")
    hyp.write_text(NOTHING[case][1], encoding="utf-8")
    code, out = run_score(capsys, ref, hyp, "--metric", metric)
    if case == "punctuation only" and metric != "wer" and metric != "cer":
        return  # a label or a BLEU over a text that is there
    assert code == 2 and len(out) == 1 and "nothing to score" in out[0], out


def test_a_key_given_twice_is_refused_naming_both_lines(tmp_path, capsys):
    ref, hyp = tmp_path / "ref", tmp_path / "hyp"
    ref.write_text("a hello\nb world\na hello again\n", encoding="utf-8")
    hyp.write_text("a hello\nb world\n", encoding="utf-8")
    code, out = run_score(capsys, ref, hyp)
    assert code == 2 and out == [
        f"eval.py: error: {ref}:3: key 'a' is given twice (also line 1)"
    ]


@pytest.mark.parametrize("where", ["missing/deeper", "read-only", "a-file"])
def test_confusion_png_folder_is_checked_before_the_table(where, tmp_path, capsys):
    """A missing folder is made; one that cannot be written is one line before anything is printed."""
    folder = tmp_path / where
    if where == "a-file":
        folder.write_text("in the way", encoding="utf-8")
    if where == "read-only":
        folder.mkdir()
        folder.chmod(0o500)
        if os.access(folder, os.W_OK):
            pytest.skip("running as a user who writes anywhere (root)")
    png = folder / "confusion.png"
    code, out = score_tags(capsys, png)
    if where != "missing/deeper":
        assert code == 2 and len(out) == 1 and str(folder) in out[0]
    else:
        assert code == 0 and folder.is_dir() and json.loads(out[-1])["metric"] == "acc"


@pytest.mark.parametrize("problem", ["missing", "directory", "latin1", "fifo"])
def test_bad_input_is_one_line_naming_the_file(problem, tmp_path, capsys):
    good = tmp_path / "good"
    good.write_text("a b\n", encoding="utf-8")
    bad = {"missing": tmp_path / "nope", "directory": tmp_path}.get(
        problem, tmp_path / problem
    )
    if problem == "latin1":
        bad.write_bytes("a caf\xe9\n".encode("latin-1"))
    if problem == "fifo":
        os.mkfifo(bad)  # read whole, it blocked for ever
    code, out = run_score(capsys, good, bad)
    assert (
        code == 2 and len(out) == 1 and str(bad) in out[0] and "Traceback" not in out[0]
    )


def test_qwen2_audio_wer_without_language_is_refused(capsys):
    code, out = run_score(
        capsys, FIXTURES / "en.ref", FIXTURES / "en.hyp", "--protocol", "qwen2-audio"
    )
    assert code == 2 and "language" in out[-1]


# cn_tn.py's TextNorm as evaluate_asr.py builds it, run on these inputs at Qwen2-Audio 595360e8 (outputs recorded
# once from the original file; our normalizers.text_norm matched it on 20,000 random digit/unit strings as well).
CN_TN = {
    "2023年5月3日开会": "二零二三年五月三日开会",
    "他花了12.5元买了3个苹果": "他花了十二点五元买了三个苹果",
    "电话13800138000，座机010-62345678": "电话一三八零零一三八零零零 座机零一零六二三四五六七八",
    "完成了3/4，增长了25.5%": "完成了四分之三 增长了百分之二十五点五",
    "我有2000块钱和20万美元": "我有两千块钱和二十万美元",
    "P2P和B2B平台": "P2P和B2B平台",
    "第12345号": "第一二三四五号",
    "温度-3.5度": "温度 三点五度",
    "0.5": "零点五",
    "２０２４年": "两千零百二十四年",
    "价格100多元": "价格一百多元",
    "他跑了200米": "他跑了两百米",
    "2个人": "二个人",
    "100000": "一零零零零零",
    "号码是＋86 13912345678": "号码是 八六一三九一二三四五六七八",
    "3.14159": "三 一四一五九",
    "1.2.3版本": "一点二 三版本",
    "03月05号": "零三月零五号",
}


@pytest.mark.parametrize("text", CN_TN)
def test_cn_tn_text_norm(text):
    from osum_min.eval.normalizers import text_norm

    assert text_norm(text) == CN_TN[text]


@pytest.mark.parametrize("pair", ["en", "zh", "mix"])
def test_scorer_of_infer_and_training_gives_the_same_figure(pair):
    """Scorer (infer.py --score-only, train.py's dev scoring) normalises labels the original's way first; on these
    transcripts that changes nothing compute-wer.py counts, so it reports compute-wer.py's figure."""
    from osum_min.eval.scoring import Scorer
    from osum_min.text.tasks import TASKS, parse

    refs, hyps = key_text(FIXTURES / f"{pair}.ref"), key_text(FIXTURES / f"{pair}.hyp")
    scorer = Scorer(TASKS["asr"], protocol="osum")
    for key in refs:
        if key in hyps:
            scorer.add(refs[key], parse(TASKS["asr"], hyps[key]))
    summary, expected = (
        scorer.summary(),
        FIGURES["osum"][f"{pair}:compute-wer.py"]["Overall"],
    )
    assert summary[scorer.metric] == pytest.approx(expected["percent"], abs=1e-9)
    assert (
        summary["reference_units"],
        summary["substitutions"],
        summary["deletions"],
        summary["insertions"],
    ) == (expected["N"], expected["S"], expected["D"], expected["I"])


@pytest.mark.parametrize("language", ["en", "zh", "yue", "fr"])
def test_scorer_with_the_qwen2_audio_protocol_gives_its_figure(language):
    """Scorer(protocol='qwen2-audio'): the given language's normaliser; without one, CJK references mean `zh`."""
    for module in ("whisper", "zhconv", "sacrebleu"):
        pytest.importorskip(module, reason="the [eval] extra")
    from osum_min.eval.scoring import Scorer
    from osum_min.text.tasks import TASKS, parse

    refs, hyps = qwen_rows(f"qwen2_audio_asr_{language}.jsonl")
    for given in {language, None} if language in ("en", "zh") else {language}:
        scorer = Scorer(TASKS["asr"], protocol="qwen2-audio", language=given)
        for key in refs:
            scorer.add(refs[key], parse(TASKS["asr"], hyps[key]))
        assert scorer.summary()[scorer.metric] == pytest.approx(
            100 * FIGURES["qwen2_audio"][f"wer_{language}"], abs=0.005
        )


def test_missing_eval_extra_is_one_line(capsys, monkeypatch):
    # as if the [eval] extra were not installed
    monkeypatch.setitem(sys.modules, "sacrebleu", None)
    code, out = run_score(
        capsys, FIXTURES / "en.ref", FIXTURES / "en.hyp", "--metric", "bleu"
    )
    assert code == 2 and len(out) == 1 and "[eval]" in out[0]
