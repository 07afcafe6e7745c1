"""WER/CER and label accuracy on hand-made cases whose answers are counted by hand."""

import unicodedata

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from osum_min.eval.scoring import (
    Edits,
    Scorer,
    alignment_counts,
    edit_distance,
    osum_tokens,
)
from osum_min.text.tasks import TASKS, parse


@pytest.mark.parametrize(
    "reference, hypothesis, edits",
    [
        ("the cat sat", "the cat sat", Edits(0, 0, 0)),
        ("the cat sat", "the bat sat", Edits(1, 0, 0)),
        ("the cat sat on the mat", "the cat on mat", Edits(0, 2, 0)),
        ("a b", "x a b y", Edits(0, 0, 2)),
        ("a b c d", "b x d e", Edits(1, 1, 1)),  # del a, sub c->x, ins e
        ("", "a b", Edits(0, 0, 2)),
        ("a b", "", Edits(0, 2, 0)),
    ],
)
def test_edit_distance(reference, hypothesis, edits):
    assert edit_distance(reference.split(), hypothesis.split()) == edits


def test_units_split_mixed_scripts_as_compute_wer():
    """compute-wer.py --char=1: CJK characters one by one, Latin runs upper-cased and kept with their ASCII
    punctuation, a token-initial `!,?` and CJK punctuation dropped, tags stripped;
    compute-cer.py spells alphanumerics."""
    assert osum_tokens("我爱python编程, don't stop!") == [
        "我",
        "爱",
        "PYTHON",
        "编",
        "程",
        "DON'T",
        "STOP!",
    ]
    assert osum_tokens("Hello,   world. <unk>你好。") == [
        "HELLO,",
        "WORLD.",
        "你",
        "好",
    ]
    assert osum_tokens("42nd 街", split_alnum=True) == ["4", "2", "N", "D", "街"]


def test_wer_english_with_normalisation():
    scorer = Scorer(TASKS["asr"])
    # compute-wer.py keeps the full stop of `mat.`: the->a and mat.->mat are 2 sub / 6
    scorer.add("The cat sat on the mat.", parse(TASKS["asr"], "the cat sat on a mat"))
    # 1 ins / 2 (case is normalised away)
    scorer.add("Hello world", parse(TASKS["asr"], "HELLO big world"))
    summary = scorer.summary()
    assert scorer.metric == "wer"
    assert (summary["substitutions"], summary["deletions"], summary["insertions"]) == (
        2,
        0,
        1,
    )
    assert summary["reference_units"] == 8 and summary["wer"] == pytest.approx(37.5)


def test_mixed_mandarin_english_is_compute_wer_s_figure_named_wer():
    """One name per figure: compute-wer.py --char=1 splits CJK per character, and eval.py calls it `wer (osum)`;
    `cer` is compute-cer.py's (alphanumeric tokens spelled out), another figure."""
    scorer = Scorer(TASKS["asr"])
    # reference units: 我 爱 python 编 程 (5); hypothesis: 我 python 编 成 (del 爱, sub 程->成)
    scorer.add("我 爱 Python 编程", parse(TASKS["asr"], "我python编成"))
    assert scorer.metric == "wer" and "cer" not in scorer.summary()
    assert scorer.summary()["wer"] == pytest.approx(40.0)
    assert scorer.lines()[0].startswith("WER 40.00% (2 errors / 5 units")


def test_a_failed_file_counts_as_all_deletions_and_wrong_labels():
    task = TASKS["asr+age+gender"]
    scorer = Scorer(task)
    scorer.add("hello world <ADULT><MALE>", parse(task, "hello world <adult><male>"))
    scorer.add("good morning to you <ADULT><FEMALE>", None)  # not decoded
    summary = scorer.summary()
    assert (summary["deletions"], summary["reference_units"]) == (4, 6)
    assert summary["wer"] == pytest.approx(400 / 6, abs=0.01)
    assert summary["gender_accuracy"] == 50.0 and scorer.problem() is None


@pytest.mark.parametrize(
    "references, decoded",
    [([], False), (["<MALE>"], False), (["hello"], False), (["", ""], True)],
)
def test_nothing_scored_is_a_problem_never_a_figure(references, decoded):
    scorer = Scorer(TASKS["asr"])
    for text in references:
        scorer.add(text, parse(TASKS["asr"], "hello") if decoded else None)
    summary = scorer.summary()
    assert "wer" not in summary and "reference_units" not in summary
    assert scorer.problem().startswith(("no file", "nothing to score"))


def test_label_accuracy_and_transcript_from_tagged_references():
    task = TASKS["asr+age+gender"]
    scorer = Scorer(task)
    scorer.add("你好<ADULT><Female>", parse(task, "你好<adult><female>"))
    scorer.add("再见<child><male>", parse(task, "再见<adult><male>"))
    scorer.add("谢谢<old><female>", parse(task, "谢谢"))  # labels missing: both wrong
    summary = scorer.summary()
    # the tags are not part of the transcript
    assert summary["wer"] == 0.0 and summary["reference_units"] == 6
    assert summary["age_accuracy"] == pytest.approx(100 / 3, abs=0.01)
    assert summary["gender_accuracy"] == pytest.approx(200 / 3, abs=0.01)


def test_style_references_are_mapped_to_classes():
    scorer = Scorer(TASKS["ssr"])
    # raw corpus style 小说 -> class 有声书
    scorer.add("从前 <小说>", parse(TASKS["ssr"], "从前<有声书>"))
    assert scorer.summary()["style_accuracy"] == 100.0


def reference_alignment(
    reference: list[str], hypothesis: list[str]
) -> list[tuple[str, str]]:
    """compute-wer.py's alignment restated cell by cell in plain Python (the oracle for the numpy engine, and the
    pure-Python speed reference of bench/score.py): costs 1/1/1, a cell takes deletion, then insertion, then the
    diagonal, each only when strictly cheaper; the path is read back from the last cell. Returns (operation, token):
    C, S, D on the reference token, I on the hypothesis token."""
    rows, cols = len(reference) + 1, len(hypothesis) + 1
    dist = [[0] * cols for _ in range(rows)]
    move = [["I"] * cols for _ in range(rows)]
    for i in range(1, rows):
        dist[i][0], move[i][0] = i, "D"
    for j in range(cols):
        dist[0][j] = j
    for i in range(1, rows):
        for j in range(1, cols):
            best, how = dist[i - 1][j] + 1, "D"
            if dist[i][j - 1] + 1 < best:
                best, how = dist[i][j - 1] + 1, "I"
            same = reference[i - 1] == hypothesis[j - 1]
            if dist[i - 1][j - 1] + (not same) < best:
                best, how = dist[i - 1][j - 1] + (not same), "C" if same else "S"
            dist[i][j], move[i][j] = best, how
    steps, i, j = [], rows - 1, cols - 1
    while i or j:
        how = move[i][j]
        steps.append((how, hypothesis[j - 1] if how == "I" else reference[i - 1]))
        i, j = i - (how != "I"), j - (how not in "D")
    return steps[::-1]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.lists(st.sampled_from("abcd"), max_size=9), min_size=1, max_size=6),
    st.lists(st.lists(st.sampled_from("abcde"), max_size=9), min_size=6, max_size=6),
)
def test_numpy_alignment_books_every_token_as_the_reference_alignment(
    references, hypotheses
):
    """Many pairs aligned together (tiny chunks too) book C/S/D/I per token exactly as the cell-by-cell rule does."""
    hypotheses = hypotheses[: len(references)]
    vocabulary = {unit: k for k, unit in enumerate("abcde")}
    expected = np.zeros((5, 4), np.int64)
    for reference, hypothesis in zip(references, hypotheses):
        for how, token in reference_alignment(reference, hypothesis):
            expected[vocabulary[token], "CSDI".index(how)] += 1
    ids = [
        [[vocabulary[u] for u in units] for units in side]
        for side in (references, hypotheses)
    ]
    for cells in (4_000_000, 30):
        assert (
            alignment_counts(ids[0], ids[1], 5, cells_per_chunk=cells) == expected
        ).all()


def reference_tokens(text: str, split_alnum: bool = False) -> list[str]:
    """compute-wer.py's characterize + normalize (compute-cer.py's with `split_alnum`) restated character by
    character, the oracle for osum_tokens' single regex."""
    tokens, i = [], 0
    while i < len(text):
        char = text[i]
        if (
            char in "!,?、。！，；？：「」︰『』《》"
            or unicodedata.category(char) in ("Zs", "Cn")
            or char in " \t\r\n"
        ):
            i += 1
        elif unicodedata.category(char) == "Lo":
            tokens.append(char)
            i += 1
        else:
            stop, j = ">" if char == "<" else " ", i + 1
            while (
                j < len(text)
                and ord(text[j]) < 128
                and text[j] not in " \t\r\n"
                and text[j] != stop
            ):
                j += 1
            j += j < len(text) and text[j] == ">"
            tokens.append(text[i:j])
            i = j
    units = []
    for token in tokens:
        token, kept = token.upper(), ""
        depth = False
        for c in token:  # stripoff_tags: from `<` to the next `>`
            if depth:
                depth = c != ">"
            elif c == "<":
                depth = True
            else:
                kept += c
        if kept:
            units += list(kept) if split_alnum and kept.isalnum() else [kept]
    return units


@settings(max_examples=500, deadline=None)
@given(
    st.text(
        st.sampled_from(
            "ab Z1.,!?'<>-_\t\n你好。，“”éßı\u3000\u00a0\U00020000\U0001f600\u0378ﬁ"
        )
        | st.characters(),
        max_size=30,
    ),
    st.booleans(),
)
def test_osum_tokens_equal_the_character_by_character_rule(text, split_alnum):
    assert osum_tokens(text, split_alnum) == reference_tokens(text, split_alnum)
