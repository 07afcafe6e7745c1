"""SRWT timing error (osum_min/eval/word_timing.py):
references read from MFA-layout TextGrids and JSONL, and its figures
against hand-computed ones for hypotheses with known time shifts and known substitutions, deletions, insertions."""

import itertools
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

from osum_min.eval.scoring import Edits, edit_distance
from osum_min.text.tasks import TASKS, Result, Word, parse
from osum_min.eval.word_timing import (
    TimingError,
    TimingScorer,
    align,
    read_word_times,
    score_timing,
)

ROOT = Path(__file__).resolve().parents[1]

# MFA's layout: a "words" and a "phones" tier over the whole file, the gaps between words as empty intervals.
LONG_TEXTGRID = """File type = "ooTextFile"
Object class = "TextGrid"

xmin = 0
xmax = 2.0
tiers? <exists>
size = 2
item []:
    item [1]:
        class = "IntervalTier"
        name = "words"
        xmin = 0
        xmax = 2.0
        intervals: size = 5
        intervals [1]:
            xmin = 0
            xmax = 0.25
            text = ""
        intervals [2]:
            xmin = 0.25
            xmax = 0.5
            text = "The"
        intervals [3]:
            xmin = 0.5
            xmax = 0.9
            text = "cat"
        intervals [4]:
            xmin = 0.9
            xmax = 1.2
            text = ""
        intervals [5]:
            xmin = 1.2
            xmax = 2.0
            text = "sat."
    item [2]:
        class = "IntervalTier"
        name = "phones"
        xmin = 0
        xmax = 2.0
        intervals: size = 2
        intervals [1]:
            xmin = 0
            xmax = 0.3
            text = ""
        intervals [2]:
            xmin = 0.3
            xmax = 2.0
            text = "DH"
"""
SHORT_TEXTGRID = """File type = "ooTextFile"
Object class = "TextGrid"

0
2.0
<exists>
2
"IntervalTier"
"phones"
0
2.0
1
0.3
2.0
"DH"
"IntervalTier"
"words"
0
2.0
5
0
0.25
""
0.25
0.5
"The"
0.5
0.9
"cat"
0.9
1.2
""
1.2
2.0
"sat."
"""
THE_CAT_SAT = [Word("The", 0.25, 0.5), Word("cat", 0.5, 0.9), Word("sat.", 1.2, 2.0)]


def jsonl_line(key: str, words: list[Word]) -> str:
    return json.dumps(
        {
            "key": key,
            "words": [{"word": w.text, "start": w.start, "end": w.end} for w in words],
        }
    )


def srwt(words: list[Word]) -> Result:
    return Result("srwt", "", transcript=" ".join(w.text for w in words), words=words)


@pytest.mark.parametrize("text", [LONG_TEXTGRID, SHORT_TEXTGRID], ids=["long", "short"])
def test_textgrid_words_tier_without_silences(tmp_path, text):
    pytest.importorskip("praatio")
    (tmp_path / "utt1.TextGrid").write_text(text)
    assert read_word_times(tmp_path / "utt1.TextGrid") == {"utt1": THE_CAT_SAT}
    # a folder of KEY.TextGrid
    assert read_word_times(tmp_path) == {"utt1": THE_CAT_SAT}


def test_speaker_word_tiers_merge_in_time_order(tmp_path):
    """MFA names the tiers "SPEAKER - words" when a file has several speakers."""
    pytest.importorskip("praatio")
    grid = SHORT_TEXTGRID.replace('"phones"', '"B - words"').replace(
        '"words"\n0\n2.0\n5', '"A - words"\n0\n2.0\n5'
    )
    (tmp_path / "two.TextGrid").write_text(grid)
    words = read_word_times(tmp_path / "two.TextGrid")["two"]
    assert [w.text for w in words] == ["The", "DH", "cat", "sat."]


def test_jsonl_references(tmp_path):
    path = tmp_path / "times.jsonl"
    path.write_text(jsonl_line("a", THE_CAT_SAT) + "\n\n" + jsonl_line("b", []) + "\n")
    assert read_word_times(path) == {"a": THE_CAT_SAT, "b": []}


WORDS_OK = '{"word": "a", "start": 0.1, "end": 0.2}'


@pytest.mark.parametrize(
    "name, content, problem",
    [
        ("x.TextGrid", "not a textgrid\n", "not a readable TextGrid"),
        ("x.TextGrid", b"\xff\xfe\x00garbage", "not a readable TextGrid"),
        (
            "x.TextGrid",
            LONG_TEXTGRID.replace('"words"', '"tokens"'),
            'no "words" tier (tiers: tokens, phones)',
        ),
        ("x.jsonl", "{not json\n", "x.jsonl:1: not JSON"),
        ("x.jsonl", '{"words": []}\n', 'x.jsonl:1: expected {"key"'),
        (
            "x.jsonl",
            '{"key": "k", "words": ['
            + WORDS_OK
            + ', {"word": "b", "start": 0.5, "end": 0.4}]}',
            "x.jsonl:1: word 2 ('b'): times 0.5, 0.4 are not 0 <= start <= end",
        ),
        (
            "x.jsonl",
            '{"key": "k", "words": [{"word": "b", "start": "0.5", "end": 1}]}',
            "start and end must be numbers",
        ),
        (
            "x.jsonl",
            '{"key": "k", "words": [{"word": "b", "start": NaN, "end": 1}]}',
            "start and end must be numbers",
        ),
        ("x.jsonl", '{"key": "k", "words": [["b", 0, 1]]}', "word 1 is not"),
        (
            "x.jsonl",
            f'{{"key": "k", "words": [{WORDS_OK}]}}\n{{"key": "k", "words": []}}',
            "key 'k' given twice",
        ),
        ("x.jsonl", "\n", "no reference word times in it"),
        ("missing.jsonl", None, "no such file or directory"),
        ("empty_folder", "folder", "no reference word times in it"),
        ("pipe.jsonl", "fifo", "a FIFO (named pipe)"),  # read_text on it never returned
        ("pipe.TextGrid", "fifo", "a FIFO (named pipe)"),
    ],
)
def test_bad_references_are_one_line_errors(tmp_path, name, content, problem):
    if name.endswith(".TextGrid"):
        pytest.importorskip("praatio")
    path = tmp_path / name
    if content == "folder":
        path.mkdir()
    elif content == "fifo":
        os.mkfifo(path)
    elif content is not None:
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(TimingError) as error:
        read_word_times(path)
    assert (
        str(error.value).startswith(str(path))
        and problem in str(error.value)
        and "\n" not in str(error.value)
    )


def test_textgrid_without_praatio_says_what_to_install(tmp_path, monkeypatch):
    # as if the eval extra were not installed
    monkeypatch.setitem(sys.modules, "praatio", None)
    (tmp_path / "k.TextGrid").write_text(LONG_TEXTGRID)
    with pytest.raises(
        TimingError,
        match=r"k.TextGrid: reading TextGrids needs praatio: pip install .\[eval\]",
    ):
        read_word_times(tmp_path / "k.TextGrid")


def test_bad_items_are_reported_and_skipped(tmp_path):
    pytest.importorskip("praatio")
    (tmp_path / "grids").mkdir()
    (tmp_path / "grids" / "good.TextGrid").write_text(LONG_TEXTGRID)
    (tmp_path / "grids" / "bad.TextGrid").write_text("garbage")
    (tmp_path / "times.jsonl").write_text(
        jsonl_line("a", THE_CAT_SAT) + "\n[1, 2]\n" + jsonl_line("c", []) + "\n"
    )
    problems = []
    assert read_word_times(tmp_path / "grids", problems) == {"good": THE_CAT_SAT}
    assert read_word_times(tmp_path / "times.jsonl", problems).keys() == {"a", "c"}
    assert len(problems) == 2 and "bad.TextGrid: not a readable TextGrid" in problems[0]
    assert problems[1].startswith(f"{tmp_path / 'times.jsonl'}:2: expected")


def test_alignment_counts_equal_edit_distance():
    """Every pair of short sequences: the path visits each unit once, in order, and its S/D/I are scoring's."""
    sequences = [list(s) for n in range(5) for s in itertools.product("abc", repeat=n)]
    for reference, hypothesis in itertools.product(sequences[:40], sequences):
        path = align(reference, hypothesis)
        assert [i for i, _ in path if i is not None] == list(range(len(reference)))
        assert [j for _, j in path if j is not None] == list(range(len(hypothesis)))
        subs = sum(
            i is not None and j is not None and reference[i] != hypothesis[j]
            for i, j in path
        )
        counts = Edits(
            subs, sum(j is None for _, j in path), sum(i is None for i, _ in path)
        )
        assert counts == edit_distance(reference, hypothesis), (
            reference,
            hypothesis,
            path,
        )


def test_figures_by_hand_through_the_srwt_parser():
    # ref: The cat sat; hyp: the(+0.1, +0.1) bat(sub) sat(-0.3 start, +0.05 end) down(ins): matched the, sat
    result = parse(
        TASKS["srwt"], "THE<0.35, 0.6> bat<0.5, 0.9> sat!<0.9, 2.05> down<2.1, 2.4>"
    )
    summary = score_timing({"k": THE_CAT_SAT}, {"k": result})
    # the: both 100 (inclusive); sat: start 300
    assert summary == {
        "utterances": 1,
        "skipped": 0,
        "matched_words": 2,
        "timed_words": 2,
        "reference_units": 3,
        "substitutions": 1,
        "deletions": 0,
        "insertions": 1,
        "wer": 66.67,
        "start_error_ms": 200.0,  # (100 + 300) / 2
        "end_error_ms": 75.0,  # (100 + 50) / 2
        "start_error_median_ms": 200.0,  # of two: their mean
        "end_error_median_ms": 75.0,
        "within_100ms": 50.0,
        "within_200ms": 50.0,
    }


def test_the_median_error_is_the_middle_word_s_not_the_mean():
    """Three timed words, starts off by 0, 100 and 800 ms: mean 300, median 100 (issue 29's
    target is a median)."""
    reference = [Word("a", 0.0, 0.5), Word("b", 1.0, 1.5), Word("c", 2.0, 2.5)]
    hypothesis = [Word("a", 0.0, 0.5), Word("b", 1.1, 1.5), Word("c", 2.8, 2.9)]
    summary = score_timing({"k": reference}, {"k": srwt(hypothesis)})
    assert summary["start_error_ms"] == 300.0
    assert summary["start_error_median_ms"] == 100.0
    assert summary["end_error_median_ms"] == 0.0


def test_cjk_characters_are_units_with_their_word_span():
    reference = [Word("你好", 0.0, 0.4), Word("世界", 0.5, 0.9)]
    hypothesis = [
        Word("你", 0.0, 0.4),
        Word("好", 0.1, 0.4),
        Word("时", 0.5, 0.7),
        Word("界", 0.5, 0.9),
    ]
    summary = score_timing({"k": reference}, {"k": srwt(hypothesis)})
    assert (summary["matched_words"], summary["substitutions"], summary["cer"]) == (
        3,
        1,
        25.0,
    )
    assert (
        summary["start_error_ms"] == pytest.approx(100 / 3, abs=0.005)
        and summary["within_100ms"] == 100.0
    )


def test_untimed_matched_words_count_outside_every_tolerance():
    hypothesis = [
        Word("the", 0.25, 0.5),
        Word("cat", None, None),
        Word("sat", 1.2, 2.0),
    ]
    summary = score_timing({"k": THE_CAT_SAT}, {"k": srwt(hypothesis)})
    assert (
        summary["matched_words"],
        summary["timed_words"],
        summary["start_error_ms"],
    ) == (
        3,
        2,
        0.0,
    )
    assert (
        summary["within_100ms"]
        == summary["within_200ms"]
        == pytest.approx(200 / 3, abs=0.01)
    )


def test_results_without_reference_are_skipped_and_named():
    summary = score_timing(
        {"k": THE_CAT_SAT}, {"k": srwt(THE_CAT_SAT), "other": srwt(THE_CAT_SAT)}
    )
    assert (summary["utterances"], summary["skipped"], summary["skipped_keys"]) == (
        1,
        1,
        ["other"],
    )
    assert summary["wer"] == 0.0 and summary["within_100ms"] == 100.0


ESPEAK = shutil.which("espeak-ng")
SPOKEN = ["seven", "apple", "river", "green", "window", "music", "yellow"]
# seconds of silence before, between and after the words
GAPS = [
    0.35,
    0.2,
    0.5,
    0.3,
    0.25,
    0.4,
    0.3,
    0.45,
]
LOUD = 0.01  # |sample| from which a sample counts as speech (-40 dBFS)


@pytest.fixture(scope="module")
def spoken(tmp_path_factory) -> tuple[Path, list[Word]]:
    """espeak-ng says each word alone; the clips, trimmed to their first and last loud sample, are joined with known
    silences, so each word's true start and end are sample positions. Written as wav, MFA-layout TextGrids (long
    and short, via praatio as MFA writes them, with a phones tier beside) and JSONL; returns (folder, true words)."""
    if ESPEAK is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    textgrid = pytest.importorskip("praatio.textgrid")
    sys.path.insert(0, str(ROOT / "examples" / "asr_gender"))
    import make_corpus

    out = tmp_path_factory.mktemp("spoken")
    at = round(GAPS[0] * 16000)  # samples so far
    pieces, words = [np.zeros(at)], []
    for word, gap in zip(SPOKEN, GAPS[1:]):
        make_corpus.speak(word, "en-us", 170, 50, out / "word.wav")
        clip = soundfile.read(out / "word.wav")[0]
        loud = np.flatnonzero(np.abs(clip) >= LOUD)
        clip = clip[loud[0] : loud[-1] + 1]
        words.append(Word(word, at / 16000, (at + len(clip)) / 16000))
        pieces += [clip, np.zeros(round(gap * 16000))]
        at += len(clip) + len(pieces[-1])
    soundfile.write(out / "utt.wav", np.concatenate(pieces), 16000, subtype="FLOAT")
    grid = textgrid.Textgrid()
    grid.addTier(
        textgrid.IntervalTier(
            "words", [(w.start, w.end, w.text) for w in words], 0, at / 16000
        )
    )
    grid.addTier(
        textgrid.IntervalTier(
            "phones",
            [(w.start, (w.start + w.end) / 2, "AH0") for w in words],
            0,
            at / 16000,
        )
    )
    (out / "long").mkdir(), (out / "short").mkdir()
    grid.save(
        str(out / "long" / "utt.TextGrid"),
        format="long_textgrid",
        includeBlankSpaces=True,
    )
    grid.save(
        str(out / "short" / "utt.TextGrid"),
        format="short_textgrid",
        includeBlankSpaces=True,
    )
    (out / "utt.jsonl").write_text(jsonl_line("utt", words) + "\n")
    return out, words


def test_references_mark_the_spoken_words(spoken):
    """Read back through every format, the word intervals hold all the speech of the file and only speech at their
    edges: the silences between them are silent."""
    out, words = spoken
    audio = soundfile.read(out / "utt.wav")[0]
    for path in (out / "long", out / "short" / "utt.TextGrid", out / "utt.jsonl"):
        read = read_word_times(path)["utt"]
        assert [w.text for w in read] == SPOKEN
        times = [t for w in words for t in (w.start, w.end)]
        assert [t for w in read for t in (w.start, w.end)] == pytest.approx(
            times, abs=1e-9
        )
    inside = np.zeros(len(audio), bool)
    for word in words:
        first, last = round(word.start * 16000), round(word.end * 16000) - 1
        assert abs(audio[first]) >= LOUD and abs(audio[last]) >= LOUD
        inside[first : last + 1] = True
    assert not np.any(np.abs(audio[~inside]) >= LOUD)


def shifted(words: list[Word], start_ms, end_ms) -> list[Word]:
    """The SPOKEN words with "apple" deleted, "green" misheard as "greed" and "purple" inserted before "music";
    each matched word's times moved by its (start, end) shift in ms; the wrong words get times far off."""
    starts = start_ms if isinstance(start_ms, list) else [start_ms] * 5
    ends = end_ms if isinstance(end_ms, list) else [end_ms] * 5
    kept = [w for w in words if w.text not in ("apple", "green")]
    hypothesis = [
        Word(w.text, w.start + s / 1000, w.end + e / 1000)
        for w, s, e in zip(kept, starts, ends)
    ]
    return (
        hypothesis[:2]
        + [Word("greed", 9.0, 9.5)]
        + hypothesis[2:3]
        + [Word("purple", 7.0, 8.0)]
        + hypothesis[3:]
    )


@pytest.mark.parametrize(
    "start_ms, end_ms, start_error, end_error, within_100, within_200",
    [
        (50, 50, 50, 50, 100, 100),
        (-50, 50, 50, 50, 100, 100),  # errors are absolute
        # the tolerance is inclusive, whatever the float sums give
        (
            100,
            -100,
            100,
            100,
            100,
            100,
        ),
        (150, 150, 150, 150, 0, 100),
        (50, -150, 50, 150, 0, 100),  # start AND end must be within
        (250, 0, 250, 0, 0, 0),
        # (0+50+120+180+250)/5; 2 of 5 within 100, 4 of 5 within 200
        (
            [0, 50, 120, 180, 250],
            0,
            120,
            0,
            40,
            80,
        ),
    ],
)
def test_known_shifts_give_hand_computed_figures(
    spoken, start_ms, end_ms, start_error, end_error, within_100, within_200
):
    out, _ = spoken
    references = read_word_times(out / "short")
    summary = score_timing(
        references, {"utt": srwt(shifted(references["utt"], start_ms, end_ms))}
    )
    assert (summary["substitutions"], summary["deletions"], summary["insertions"]) == (
        1,
        1,
        1,
    )
    assert (
        summary["wer"] == pytest.approx(300 / 7, abs=0.005)
        and summary["matched_words"] == 5
    )
    assert summary["start_error_ms"] == pytest.approx(start_error, abs=1e-6)
    assert summary["end_error_ms"] == pytest.approx(end_error, abs=1e-6)
    assert (summary["within_100ms"], summary["within_200ms"]) == (
        within_100,
        within_200,
    )


def test_corpus_figures_pool_words_not_utterances(spoken):
    out, _ = spoken
    words = read_word_times(out / "utt.jsonl")["utt"]
    scorer = TimingScorer()
    scorer.add(words, srwt(shifted(words, 50, 0)))  # 5 matched words, 50 ms each
    # 2 words, 200 ms
    scorer.add(words[:2], srwt([Word(w.text, w.start + 0.2, w.end) for w in words[:2]]))
    summary = scorer.summary()
    assert summary["utterances"] == 2 and summary["matched_words"] == 7
    assert summary["start_error_ms"] == pytest.approx((5 * 50 + 2 * 200) / 7, abs=0.005)
    assert (
        summary["within_100ms"] == pytest.approx(500 / 7, abs=0.005)
        and summary["within_200ms"] == 100.0
    )
    # 3 errors over 7 + 2 reference words
    assert summary["wer"] == pytest.approx(300 / 9, abs=0.005)
