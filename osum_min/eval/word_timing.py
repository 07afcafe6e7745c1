"""SRWT timing error: how far the word times OSUM writes (`word<0.3, 0.7>`) are from reference word times.

References come from forced alignments — Praat TextGrids as the Montreal Forced Aligner writes them (a "words" tier,
or "SPEAKER - words" tiers, with empty intervals for the silences between words) — or from JSONL lines
`{"key": ..., "words": [{"word": ..., "start": s, "end": s}, ...]}`. Times are only comparable where the words agree,
so hypothesis and reference are aligned by edit distance over the units transcripts are scored on
(osum_min.eval.scoring:
case-folded, punctuation dropped, one CJK character per unit) and only the correct pairs are timed. A word that
splits into several units (`你好`, `e-mail`) lends its span to each of them, so character-level references suit
character-level output. TextGrids are read with praatio (the `eval` extra), the library MFA writes them with.
"""

import json
import math
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from osum_min.files import MAX_LIST_BYTES, FileError, check_file, read_text
from osum_min.eval.scoring import Edits, edit_operations, normalise, scoring_units
from osum_min.text.tasks import CJK_CHARS, Result, Word

TOLERANCES_MS = (100, 200)
# MFA's silence intervals on the words tier: not words
SILENCE_MARKS = {
    "",
    "<eps>",
    "sil",
    "sp",
}
# MFA: "words", or "SPEAKER - words" per speaker
_WORDS_TIER = re.compile(r"(?:.+ - )?words", re.IGNORECASE)
_CJK = re.compile(f"[{CJK_CHARS}]")


class TimingError(ValueError):
    """A reference file (or one item of it) that cannot be read: the message names the file and the problem."""


def _report(message: str, problems: list[str] | None) -> None:
    """A bad item of a list: raise when the caller keeps no `problems` list, else note it and go on."""
    if problems is None:
        raise TimingError(message)
    problems.append(message)


def read_textgrid(path: Path) -> list[Word]:
    """The words of a TextGrid's words tier(s), in time order; silence intervals dropped."""
    try:  # the `eval` extra; only TextGrid references need it
        from praatio import textgrid
        from praatio.utilities.errors import PraatioException
    except ImportError:
        raise TimingError(
            f"{path}: reading TextGrids needs praatio: pip install .[eval]"
        ) from None
    try:
        # praatio opens the path itself: never a FIFO or a device
        check_file(path, "TextGrid")
        grid = textgrid.openTextgrid(str(path), includeEmptyIntervals=False)
    except FileError as err:
        raise TimingError(str(err)) from None
    # praatio reports a malformed file as whatever its parser stumbles on (IndexError, ValueError...) or its own error
    except (PraatioException, IndexError, KeyError, ValueError, OSError) as err:
        problem = " ".join(f"{type(err).__name__}: {err}".split())
        raise TimingError(f"{path}: not a readable TextGrid ({problem})") from None
    tiers = [name for name in grid.tierNames if _WORDS_TIER.fullmatch(name)]
    if not tiers:
        raise TimingError(
            f'{path}: no "words" tier (tiers: {", ".join(grid.tierNames) or "none"})'
        )
    if any(not isinstance(grid.getTier(name), textgrid.IntervalTier) for name in tiers):
        raise TimingError(
            f"{path}: the words tier is a point tier, not an interval tier"
        )
    # speakers interleaved by time
    entries = sorted(entry for name in tiers for entry in grid.getTier(name).entries)
    return [
        Word(label.strip(), start, end)
        for start, end, label in entries
        if label.strip() not in SILENCE_MARKS
    ]


def _json_words(line: str) -> tuple[str, list[Word]]:
    """One JSONL line -> (key, words); a TimingError says what is wrong with it (read_jsonl adds where)."""
    try:
        entry = json.loads(line)
    except json.JSONDecodeError:
        raise TimingError("not JSON") from None
    if (
        not isinstance(entry, dict)
        or not isinstance(entry.get("key"), str)
        or not isinstance(entry.get("words"), list)
    ):
        raise TimingError(
            'expected {"key": "...", "words": [{"word", "start", "end"}, ...]}'
        )
    words = []
    for number, item in enumerate(entry["words"], 1):
        times = [
            item.get(side) if isinstance(item, dict) else None
            for side in ("start", "end")
        ]
        if not isinstance(item, dict) or not isinstance(item.get("word"), str):
            raise TimingError(
                f'word {number} is not {{"word": text, "start": s, "end": s}}'
            )
        if not all(
            isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t)
            for t in times
        ):
            raise TimingError(
                f"word {number} ({item['word']!r}): start and end must be numbers (seconds)"
            )
        if not 0 <= times[0] <= times[1]:
            raise TimingError(
                f"word {number} ({item['word']!r}): times {times[0]}, {times[1]} are not "
                "0 <= start <= end"
            )
        words.append(Word(item["word"], float(times[0]), float(times[1])))
    return entry["key"], words


def read_jsonl(path: Path, problems: list[str] | None = None) -> dict[str, list[Word]]:
    references = {}
    try:
        lines = read_text(path, "word-times JSONL file", MAX_LIST_BYTES).splitlines()
    except FileError as err:
        raise TimingError(str(err)) from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            key, words = _json_words(line)
        except TimingError as err:
            _report(f"{path}:{number}: {err}", problems)
            continue
        if key in references:
            _report(
                f"{path}:{number}: key {key!r} given twice (the first is kept)",
                problems,
            )
            continue
        references[key] = words
    return references


def read_word_times(
    path: str | Path, problems: list[str] | None = None
) -> dict[str, list[Word]]:
    """Reference word times by key from a TextGrid (key: its name without suffix), a folder of KEY.TextGrid files or
    a JSONL file. A bad item of a folder or JSONL file is added to `problems` and skipped when a list is given, else
    raised; a path that yields no references at all is always a TimingError."""
    path = Path(path)
    if not path.exists():
        raise TimingError(f"{path}: no such file or directory")
    if path.is_dir():
        references = {}
        for grid in sorted(
            p for p in path.iterdir() if p.suffix.lower() == ".textgrid"
        ):
            try:
                references[grid.stem] = read_textgrid(grid)
            except TimingError as err:
                _report(str(err), problems)
    elif path.suffix.lower() == ".textgrid":
        references = {path.stem: read_textgrid(path)}
    else:
        references = read_jsonl(path, problems)
    if not references:
        raise TimingError(
            f"{path}: no reference word times in it (expected TextGrids or JSONL word times)"
        )
    return references


def _units(words: list[Word]) -> list[tuple[str, float | None, float | None]]:
    """Scoring units, each with the span of the word it came from."""
    return [
        (unit, w.start, w.end)
        for w in words
        for unit in scoring_units(normalise(w.text))
    ]


def align(
    reference: list[str], hypothesis: list[str]
) -> list[tuple[int | None, int | None]]:
    """Index pairs along scoring's edit path: (i, j) a hit or substitution, (i, None) a deletion, (None, j) an
    insertion; the path's S/D/I are `scoring.edit_distance`'s counts."""
    path, i, j = [], 0, 0
    for operation in edit_operations(reference, hypothesis):
        path.append((i if operation != 3 else None, j if operation != 2 else None))
        i, j = i + (operation != 3), j + (operation != 2)
    return path


@dataclass
class TimingScorer:
    """Pools word-time errors over a test set. Means and medians are over matched (correct) words whose
    hypothesis has both times; `within_100ms`/`within_200ms` are the share of all matched words whose start
    AND end each differ from the reference by at most that many ms (inclusive), a matched word the model
    gave no time counting as outside."""

    edits: Edits = field(default_factory=Edits)
    reference_units: int = 0
    cjk: bool = False
    matched: int = 0
    timed: int = 0  # matched words with a start and an end in the hypothesis
    # each timed word's start and end error
    start_errors_ms: list[float] = field(default_factory=list)
    end_errors_ms: list[float] = field(default_factory=list)
    within: dict[int, int] = field(
        default_factory=lambda: dict.fromkeys(TOLERANCES_MS, 0)
    )
    utterances: int = 0
    # keys with a result but no reference
    skipped: list[str] = field(default_factory=list)

    def add(self, reference_words: list[Word], result: Result) -> None:
        ref = _units(reference_words)
        # a result of another task has no words: its transcript counts for WER, untimed
        hyp = _units(
            result.words
            if result.words is not None
            else [Word(result.transcript or "", None, None)]
        )
        path = align([u for u, *_ in ref], [u for u, *_ in hyp])
        subs = sum(
            i is not None and j is not None and ref[i][0] != hyp[j][0] for i, j in path
        )
        dels, ins = sum(j is None for _, j in path), sum(i is None for i, _ in path)
        self.edits = Edits(
            self.edits.substitutions + subs,
            self.edits.deletions + dels,
            self.edits.insertions + ins,
        )
        self.reference_units += len(ref)
        self.cjk = self.cjk or any(_CJK.match(u) for u, *_ in ref)
        self.utterances += 1
        for i, j in path:
            if i is None or j is None or ref[i][0] != hyp[j][0]:
                continue
            self.matched += 1
            (_, ref_start, ref_end), (_, hyp_start, hyp_end) = ref[i], hyp[j]
            if hyp_start is None or hyp_end is None:
                continue
            # rounded to a nanosecond so that a 0.1 s shift is 100 ms, not 100.00000000000003
            start, end = (
                round(abs(hyp_start - ref_start) * 1000, 6),
                round(abs(hyp_end - ref_end) * 1000, 6),
            )
            self.timed += 1
            self.start_errors_ms.append(start)
            self.end_errors_ms.append(end)
            for tolerance in TOLERANCES_MS:
                self.within[tolerance] += max(start, end) <= tolerance

    def summary(self) -> dict:
        metric = "cer" if self.cjk else "wer"
        out = {
            "utterances": self.utterances,
            "skipped": len(self.skipped),
            "matched_words": self.matched,
            "timed_words": self.timed,
            "reference_units": self.reference_units,
            "substitutions": self.edits.substitutions,
            "deletions": self.edits.deletions,
            "insertions": self.edits.insertions,
        }
        if self.reference_units:
            out[metric] = round(100 * self.edits.errors / self.reference_units, 2)
        for edge, errors in (
            ("start", self.start_errors_ms),
            ("end", self.end_errors_ms),
        ):
            if errors:
                out[f"{edge}_error_ms"] = round(sum(errors) / len(errors), 2)
                out[f"{edge}_error_median_ms"] = round(statistics.median(errors), 2)
        if self.matched:
            out |= {
                f"within_{t}ms": round(100 * self.within[t] / self.matched, 2)
                for t in TOLERANCES_MS
            }
        return out


def score_timing(references: dict[str, list[Word]], results: dict[str, Result]) -> dict:
    """The evaluation runner's entry: pooled timing figures over every result that has a reference; results without
    one are counted as skipped and named in `skipped_keys`."""
    scorer = TimingScorer()
    for key, result in results.items():
        if key in references:
            scorer.add(references[key], result)
        else:
            scorer.skipped.append(key)
    return scorer.summary() | (
        {"skipped_keys": scorer.skipped} if scorer.skipped else {}
    )
