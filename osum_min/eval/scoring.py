"""Scores against references, by the rules of the original evaluation tools, digit for digit.

Two protocols (docs/evaluation.md, "Scoring"):
- `osum`: OSUM's `tools/compute-wer.py --char=1` (what its `decode/do_docode.sh` runs for every task), its
  `compute-cer.py` (alphanumeric tokens split into characters) and `compute-acc.py` (first `<tag>` of a line);
  ASLP-lab/OSUM at f2bcfac9cadb78aa0fb453a6aa712b5eff8b8384.
- `qwen2-audio`: Qwen2-Audio's `eval_audio` scripts (per-language normalisers, corpus edit distance, sacrebleu BLEU,
  exact-match accuracy); the normalisers live in `normalizers.py`.

compute-wer.py's counts depend on how its alignment breaks ties (deletion, then insertion, then the diagonal, each
only when strictly cheaper than the one before) and on which token each count is booked to (correct, substituted and
deleted on the reference token, inserted on the hypothesis token; the per-language lines sum the tokens of each
script class). Its pure-Python alignment costs minutes on a large test set; here the same recurrence runs on numpy
arrays for many pairs at once, and the same tie rule is read back from the distance table.
"""

import functools
import re
import unicodedata
from dataclasses import dataclass, field

import numpy as np

from osum_min.text.tasks import CJK_CHARS, Result, Task, parse
from osum_min.text.tokenizer import map_style_tags, process_text

PROTOCOLS = ("osum", "qwen2-audio")
METRICS = ("wer", "cer", "acc", "bleu")
NO_TAG = "<--no_tag-->"
_PUNCTS = "!,?、。！，；？：「」︰『』《》"  # characters compute-wer.py drops where a token would start
_SPACES = " \t\r\n"
_CLUSTER_PREFIXES = (
    ("DIGIT", "Number"),
    ("CJK UNIFIED IDEOGRAPH", "Mandarin"),
    ("CJK COMPATIBILITY IDEOGRAPH", "Mandarin"),
    ("LATIN CAPITAL LETTER", "English"),
    ("LATIN SMALL LETTER", "English"),
    ("HIRAGANA LETTER", "Japanese"),
)
_NEUTRAL_PREFIXES = (
    "AMPERSAND",
    "APOSTROPHE",
    "COMMERCIAL AT",
    "DEGREE CELSIUS",
    "EQUALS SIGN",
    "FULL STOP",
    "HYPHEN-MINUS",
    "LOW LINE",
    "NUMBER SIGN",
    "PLUS SIGN",
    "SEMICOLON",
)
# compute-wer.py's stripoff_tags: from `<` to the next `>` (or the end)
_TAG = re.compile(r"<[^>]*>?")
_FIRST_TAG = re.compile(r"<.*?>")  # compute-acc.py's do_get_first_tag_from_str
_CJK = re.compile(f"[{CJK_CHARS}]")
# One CJK character, or one run of other letters/digits/apostrophes; punctuation and spacing never count. The units
# of SRWT word matching (word_timing.py), not of the protocols' error rates.
_UNIT = re.compile(f"[{CJK_CHARS}]|[^\\W_{CJK_CHARS}]+(?:'[^\\W_{CJK_CHARS}]+)*")


def _char_class(codes: list[int]) -> str:
    """A regex character class body for these code points, as ranges."""
    parts, start = [], None
    for k, code in enumerate(codes):
        if start is None:
            start = code
        if k + 1 == len(codes) or codes[k + 1] != code + 1:
            parts.append(
                re.escape(chr(start))
                + ("-" + re.escape(chr(code)) if code > start else "")
            )
            start = None
    return "".join(parts)


@functools.cache
def _token_pattern() -> re.Pattern:
    """compute-wer.py's `characterize` as one regex, from this Python's Unicode tables (as the original used):
    a letter-other character (`Lo`: CJK, kana...) is a token; `<` starts a tag token that runs over ASCII to `>`;
    any other character starts a token that runs over ASCII up to a space. Spaces (`Zs`), unassigned code points and
    the listed punctuation are skipped where a token would start (so `world.` keeps its full stop)."""
    categories = [unicodedata.category(chr(code)) for code in range(0x110000)]
    letters = _char_class([code for code, cat in enumerate(categories) if cat == "Lo"])
    skipped = _char_class(
        sorted(
            {code for code, cat in enumerate(categories) if cat in ("Zs", "Cn")}
            | {ord(c) for c in _PUNCTS + _SPACES}
        )
    )
    ascii_run = r"[\x00-\x08\x0b\x0c\x0e-\x1f\x21-\x7f]*"  # ASCII less compute-wer.py's four spaces
    # ASCII starts first, and the big non-ASCII classes only behind a cheap look-ahead: re tests code points
    # beyond U+FFFF of a class one range at a time, so a space tried against them would cost hundreds of tests.
    return re.compile(
        f"<[\\x00-\\x08\\x0b\\x0c\\x0e-\\x1f\\x21-\\x3d\\x3f-\\x7f]*>?"
        f"|[\\x00-\\x08\\x0b\\x0c\\x0e-\\x1f\\x22-\\x2b\\x2d-\\x3b\\x3d-\\x3e\\x40-\\x7f]{ascii_run}"
        f"|(?=[^\\x00-\\x7f])(?:[{letters}]|[^{skipped}{letters}]{ascii_run})"
    )


def osum_tokens(text: str, split_alnum: bool = False) -> list[str]:
    """The units compute-wer.py (`split_alnum`: compute-cer.py) scores: `characterize`, upper-cased, tags stripped,
    empty tokens dropped; compute-cer.py also spells each alphanumeric token (`42ND`, `你`) as its characters."""
    tokens = _token_pattern().findall(text)
    if not tokens:
        return []
    # no token holds a newline; upper() maps character by character
    tokens = "\n".join(tokens).upper().split("\n")
    if "<" in text:
        tokens = [
            stripped
            for stripped in (_TAG.sub("", token) for token in tokens)
            if stripped
        ]
    if split_alnum:
        return [
            unit
            for token in tokens
            for unit in (token if token.isalnum() else (token,))
        ]
    return tokens


def default_cluster(word: str) -> str:
    """compute-wer.py's `default_cluster`: the script class of a token for its per-language lines. A character
    without a Unicode name (a control character) makes the original fail; here it is `Other`."""
    classes = []
    for char in word:
        name = unicodedata.name(char, "")
        cluster = next(
            (label for prefix, label in _CLUSTER_PREFIXES if name.startswith(prefix)),
            None,
        )
        if cluster:
            classes.append(cluster)
        elif not name.startswith(_NEUTRAL_PREFIXES) or not name:
            return "Other"
    return classes[0] if classes and len(set(classes)) == 1 else "Other"


def alignment_counts(
    references: list[list[int]],
    hypotheses: list[list[int]],
    vocabulary: int,
    cells_per_chunk: int = 4_000_000,
) -> np.ndarray:
    """(vocabulary, 4) counts of correct, substituted, deleted, inserted per token id, over every pair, booked as
    compute-wer.py books them."""
    lengths = [len(units) for units in references + hypotheses]
    flat = np.fromiter(
        (unit for units in references + hypotheses for unit in units),
        np.int64,
        sum(lengths),
    )
    starts = np.cumsum([0] + lengths[:-1], dtype=np.int64)
    lengths, pairs = np.array(lengths, np.int64), len(references)
    return _counts(
        flat,
        (starts[:pairs], lengths[:pairs]),
        (starts[pairs:], lengths[pairs:]),
        vocabulary,
        cells_per_chunk,
    )


def _counts(
    flat: np.ndarray,
    references,
    hypotheses,
    vocabulary: int,
    cells_per_chunk: int = 4_000_000,
):
    """alignment_counts on token ids laid end to end: `references` and `hypotheses` are (starts, lengths) into
    `flat`. Pairs of similar length are aligned together in numpy: the distance table row by row (a row's insertions
    are a running minimum), then every pair's path back from its last cell at once."""
    longest = np.maximum(references[1], hypotheses[1])
    order = np.argsort(longest, kind="stable")
    fitting = lambda k: max(1, cells_per_chunk // (int(longest[order[k]]) + 1) ** 2)  # noqa: E731  pairs per table
    codes, start = [np.zeros(0, np.int64)], 0
    while start < len(order):
        stop = min(len(order), start + fitting(start))
        # the chunk's longest pair sets its table's size
        stop = min(stop, start + fitting(stop - 1))
        chunk = order[start:stop]
        codes.append(
            _align_chunk(
                flat,
                references[0][chunk],
                references[1][chunk],
                hypotheses[0][chunk],
                hypotheses[1][chunk],
            )
        )
        start = stop
    return np.bincount(np.concatenate(codes), minlength=4 * vocabulary).reshape(
        vocabulary, 4
    )


@dataclass
class Edits:
    substitutions: int = 0
    deletions: int = 0
    insertions: int = 0

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions


def _total_counts(
    references: list[list[str]], hypotheses: list[list[str]]
) -> np.ndarray:
    """Correct, substituted, deleted, inserted over all pairs of string units."""
    vocabulary = {}
    ids = [
        [vocabulary.setdefault(unit, len(vocabulary)) for unit in units]
        for units in references + hypotheses
    ]
    return alignment_counts(
        ids[: len(references)], ids[len(references) :], len(vocabulary)
    ).sum(axis=0)


def edit_distance(reference: list[str], hypothesis: list[str]) -> Edits:
    """One pair's substitutions, deletions and insertions, ties broken as compute-wer.py breaks them."""
    _, subs, dels, ins = (int(x) for x in _total_counts([reference], [hypothesis]))
    return Edits(subs, dels, ins)


def edit_operations(reference: list[str], hypothesis: list[str]) -> list[int]:
    """One pair's edit path from the first units to the last, as operations (0 correct, 1 substitution, 2 deletion,
    3 insertion): the path compute-wer.py walks back, so its counts are `edit_distance`'s."""
    vocabulary = {}
    ids = [
        vocabulary.setdefault(unit, len(vocabulary)) for unit in reference + hypothesis
    ]
    codes = _align_chunk(
        np.array(ids, np.int64),
        np.array([0]),
        np.array([len(reference)]),
        np.array([len(reference)]),
        np.array([len(hypothesis)]),
    )
    return (codes[::-1] % 4).tolist()


def _padded(
    flat: np.ndarray, starts: np.ndarray, lengths: np.ndarray, pad: int
) -> np.ndarray:
    span = np.arange(max(int(lengths.max()), 1))
    taken = flat[np.minimum(starts[:, None] + span, len(flat) - 1)] if len(flat) else 0
    return np.where(span < lengths[:, None], taken, pad)  # (P, longest)


def _align_chunk(flat, ref_starts, i, hyp_starts, j) -> np.ndarray:
    """token id * 4 + operation (0 correct, 1 substitution, 2 deletion, 3 insertion) for every step of every pair."""
    # (P, N); padding never equals a token or the other padding
    ref = _padded(flat, ref_starts, i, -1)
    hyp = _padded(flat, hyp_starts, j, -2)  # (P, M)
    rows, cols = int(i.max()), int(j.max())
    pairs, span = np.arange(len(i)), np.arange(cols + 1)
    dist = np.empty((len(i), rows + 1, cols + 1), np.int32)  # (P, N+1, M+1)
    dist[:, 0, :] = span
    for row in range(1, rows + 1):
        previous = dist[:, row - 1, :]
        best = np.minimum(
            previous[:, :-1] + (ref[:, row - 1 : row] != hyp[:, :cols]),
            previous[:, 1:] + 1,
        )
        # (P, M+1)
        best = np.concatenate([np.full((len(i), 1), row, np.int32), best], axis=1)
        dist[:, row, :] = np.minimum.accumulate(best - span, axis=1) + span
    steps = []
    for _ in range(rows + cols):
        active = (i > 0) | (j > 0)
        if not active.any():
            break
        here = dist[pairs, i, j]
        up, left = np.maximum(i - 1, 0), np.maximum(j - 1, 0)
        deletion = (i > 0) & (dist[pairs, up, j] + 1 == here)
        insertion = ~deletion & (j > 0) & (dist[pairs, i, left] + 1 == here)
        diagonal = active & ~deletion & ~insertion
        ref_token, hyp_token = ref[pairs, up], hyp[pairs, left]
        operation = np.where(
            deletion, 2, np.where(insertion, 3, np.where(ref_token == hyp_token, 0, 1))
        )
        steps.append(
            (np.where(insertion, hyp_token, ref_token) * 4 + operation)[active]
        )
        i, j = i - (deletion | diagonal), j - (insertion | diagonal)
    return np.concatenate(steps) if steps else np.zeros(0, np.int64)


def _line(counts: np.ndarray) -> dict:
    """One compute-wer.py summary line: percent, N (reference tokens), C, S, D, I."""
    correct, sub, dele, ins = (int(x) for x in counts)
    total = correct + sub + dele
    return {
        "percent": 100.0 * (sub + dele + ins) / total if total else 0.0,
        "N": total,
        "C": correct,
        "S": sub,
        "D": dele,
        "I": ins,
    }


def osum_error_rate(
    refs: dict[str, str], hyps: dict[str, str], split_alnum: bool = False
) -> dict:
    """compute-wer.py --char=1 (`split_alnum`: compute-cer.py): keys of both files, in the reference's order
    (score_texts gives every reference one). Overall counts at the top level, then one line per script class in
    the order the original prints them."""
    keys = [key for key in refs if key in hyps]
    # per utterance its hypothesis then its reference: the order the original meets words
    words, lengths = (
        [],
        [],
    )
    for key in keys:
        rec, lab = (
            osum_tokens(hyps[key], split_alnum),
            osum_tokens(refs[key], split_alnum),
        )
        words += rec
        words += lab
        lengths += (len(rec), len(lab))
    vocabulary = {word: index for index, word in enumerate(dict.fromkeys(words))}
    flat = np.fromiter(map(vocabulary.__getitem__, words), np.int64, len(words))
    starts, lengths = (
        np.cumsum([0] + lengths[:-1], dtype=np.int64),
        np.array(lengths, np.int64),
    )
    counts = _counts(
        flat,
        (starts[1::2], lengths[1::2]),
        (starts[0::2], lengths[0::2]),
        len(vocabulary),
    )
    clusters = {}
    for (
        word,
        index,
        # insertion order: the order the original first meets each class
    ) in vocabulary.items():
        clusters.setdefault(default_cluster(word), []).append(index)
    overall = _line(counts.sum(axis=0))
    result = {"value": overall.pop("percent"), **overall, "utterances": len(keys)}
    for name, members in clusters.items():
        result[name] = _line(counts[members].sum(axis=0))
    return result


def first_tag(text: str) -> str:
    """compute-acc.py's label of a line: its first `<...>`, upper-cased, or `<--no_tag-->`."""
    match = _FIRST_TAG.search(text)
    return match.group(0).upper() if match else NO_TAG


def osum_accuracy(refs: dict[str, str], hyps: dict[str, str]) -> dict:
    """compute-acc.py: a line with only a key is dropped (its scp loader needs two fields); hypothesis keys the
    reference lacks are skipped but still count in the division; the confusion matrix is over the reference's tags
    (a predicted tag the reference never uses is left out of it)."""
    ref_tags = {
        key: first_tag(" ".join(text.split()))
        for key, text in refs.items()
        if text.split()
    }
    hyp_tags = {
        key: first_tag(" ".join(text.split()))
        for key, text in hyps.items()
        if text.split()
    }
    if not hyp_tags:
        raise NothingToScore(
            "every hypothesis line is only a key: compute-acc.py scores none"
        )
    labels = sorted(set(ref_tags.values()))
    matrix = [[0] * len(labels) for _ in labels]
    hits = 0
    for key, tag in hyp_tags.items():
        if key not in ref_tags:
            continue
        hits += tag == ref_tags[key]
        if tag in labels:
            matrix[labels.index(ref_tags[key])][labels.index(tag)] += 1
    return {
        "value": 100.0 * hits / len(hyp_tags),
        "correct": hits,
        "total": len(hyp_tags),
        "labels": labels,
        "confusion": matrix,
    }


class NothingToScore(ValueError):
    """No line, no common key or no reference word: a figure over nothing would read as a perfect score."""


def _check_pairs(refs: dict[str, str], hyps: dict[str, str]) -> list[str]:
    """The reference keys without a hypothesis; NothingToScore where nothing could be scored."""
    if not refs:
        raise NothingToScore("the reference has no line: nothing to score")
    if not hyps:
        raise NothingToScore("the hypothesis has no line: nothing to score")
    missing = [key for key in refs if key not in hyps]
    if len(missing) == len(refs):
        raise NothingToScore(
            f"no key of the hypothesis is in the reference (reference {next(iter(refs))!r}..., "
            f"hypothesis {next(iter(hyps))!r}...): nothing to score"
        )
    if not any(text.strip() for text in refs.values()):
        raise NothingToScore(
            "every reference line is only a key (no text): nothing to score"
        )
    return missing


def missing_warning(result: dict) -> str | None:
    """The line that says how many references had no hypothesis and how they were counted."""
    if not result.get("missing"):
        return None
    counted = (
        "not counted (compute-acc.py divides by the hypothesis lines)"
        if result["metric"] == "acc" and result["protocol"] == "osum"
        else "each counted as all deletions"
        if result["metric"] in ("wer", "cer")
        else "each scored as an empty text"
        if result["metric"] == "bleu"
        else "each counted wrong"
    )
    return f"{result['missing']} of {result['references']} references have no hypothesis: {counted}"


def score_texts(
    refs: dict[str, str],
    hyps: dict[str, str],
    protocol: str = "osum",
    metric: str = "wer",
    language: str | None = None,
    bleu_tokenize: str | None = None,
) -> dict:
    """Score hypotheses against references by one protocol's rules; the JSON object `eval.py score` prints last.

    `value` is a percentage for wer/cer/acc and the BLEU score for bleu; wer/cer add the overall N, C, S, D, I and
    (osum) one line per script class. A reference without a hypothesis is an empty hypothesis (all deletions; the
    original's compute-wer.py drops it, which flatters a run that lost outputs), counted in `missing`; compute-acc.py's
    own rule is kept for osum acc. Nothing to score (no line, no common key, no reference word) is NothingToScore,
    never 0.00 %. BLEU is sacrebleu's, as Qwen2-Audio's evaluate_st.py computes it, whichever the protocol."""
    if protocol not in PROTOCOLS:
        raise ValueError(
            f"unknown protocol {protocol!r}: one of {', '.join(PROTOCOLS)}"
        )
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}: one of {', '.join(METRICS)}")
    missing = _check_pairs(refs, hyps)
    head = {
        "protocol": protocol,
        "metric": metric,
        "references": len(refs),
        "missing": len(missing),
    }
    hyps = {key: hyps.get(key, "") for key in refs} if metric != "acc" else hyps
    if metric == "bleu":
        from osum_min.eval.normalizers import bleu

        return {
            **head,
            **bleu(list(refs.values()), list(hyps.values()), language, bleu_tokenize),
        }
    if protocol == "osum":
        if metric == "acc":
            return {**head, **osum_accuracy(refs, hyps)}
        return {
            **head,
            **_nonzero(osum_error_rate(refs, hyps, split_alnum=metric == "cer")),
        }
    from osum_min.eval import normalizers

    if metric == "acc":
        return {**head, **normalizers.exact_match_accuracy(refs, hyps)}
    if metric == "cer":
        raise ValueError(
            "qwen2-audio has no cer metric: its wer counts Mandarin and Cantonese per character"
        )
    if language is None:
        raise ValueError(
            "qwen2-audio's wer needs a language (en, zh, yue, fr, ...): its normaliser follows it"
        )
    ref_units, hyp_units = normalizers.qwen2_audio_units(
        list(refs.values()), list(hyps.values()), language
    )
    overall = _line(_total_counts(ref_units, hyp_units))
    return {
        **head,
        "language": language,
        "value": overall.pop("percent"),
        **_nonzero(overall),
        "utterances": len(refs),
    }


def _nonzero(counts: dict) -> dict:
    """An error rate's counts, refused when the references hold no unit (N=0: a rate of nothing)."""
    if not counts["N"]:
        raise NothingToScore(
            "the references hold no word to score (N=0): nothing to score"
        )
    return counts


def scoring_units(text: str) -> list[str]:
    return _UNIT.findall(text)


def normalise(text: str) -> str:
    """The original's label normalisation (docs/original.md §8), applied to references and hypotheses alike."""
    return map_style_tags(process_text(text))


@dataclass
class Scorer:
    """Accumulates a test list's transcripts and labels; `summary()` scores the transcripts by `protocol`'s rules
    (compute-wer.py's for `osum`: `wer`, whatever the script, as eval.py names it) and each label kind as accuracy.
    A file that failed is added without a hypothesis: all deletions and wrong labels, as score_texts counts a
    missing one. `language` is qwen2-audio's normaliser choice; left out, a list with CJK references is `zh` and
    any other `en`."""

    task: Task
    protocol: str = "osum"
    language: str | None = None
    references: dict[str, str] = field(default_factory=dict)
    hypotheses: dict[str, str] = field(default_factory=dict)
    label_hits: dict[str, int] = field(default_factory=dict)
    label_totals: dict[str, int] = field(default_factory=dict)
    utterances: int = 0
    skipped: int = 0  # files of the list that could not be read or decoded
    metric = "wer"

    def __post_init__(self):
        if self.protocol not in PROTOCOLS:
            raise ValueError(
                f"unknown protocol {self.protocol!r}: one of {', '.join(PROTOCOLS)}"
            )

    def add(self, reference_text: str, hypothesis: Result | None) -> None:
        """One file's reference and answer; None: it failed."""
        reference = parse(self.task, normalise(reference_text))
        self.utterances += 1
        if self.task.transcript and reference.transcript is not None:
            key = str(len(self.references))
            self.references[key] = reference.transcript
            if hypothesis is not None:
                self.hypotheses[key] = hypothesis.transcript or ""
        for kind, label in reference.labels.items():
            self.label_totals[kind] = self.label_totals.get(kind, 0) + 1
            hit = (
                hypothesis is not None
                and hypothesis.labels.get(kind, "").lower() == label
            )
            self.label_hits[kind] = self.label_hits.get(kind, 0) + hit

    @property
    def cjk(self) -> bool:
        return any(_CJK.search(text) for text in self.references.values())

    def transcript_score(self) -> dict | None:
        """The transcripts' score; None where there is nothing to score (no reference word, nothing decoded)."""
        language = self.language or ("zh" if self.cjk else "en")
        try:
            return score_texts(
                self.references, self.hypotheses, self.protocol, "wer", language
            )
        except NothingToScore:
            return None

    def summary(self) -> dict:
        out = {"utterances": self.utterances, "skipped": self.skipped}
        if score := self.transcript_score():
            out[self.metric] = round(score["value"], 2)
            out.update(
                substitutions=score["S"],
                deletions=score["D"],
                insertions=score["I"],
                reference_units=score["N"],
                protocol=self.protocol,
            )
        for kind, total in self.label_totals.items():
            out[f"{kind}_accuracy"] = round(100 * self.label_hits[kind] / total, 2)
        return out

    def problem(self) -> str | None:
        """Why the summary holds no figure at all (None: it holds one)."""
        summary = self.summary()
        if self.metric in summary or any(key.endswith("_accuracy") for key in summary):
            return None
        if not self.utterances:
            return "no file with a reference was scored"
        return "nothing to score: the references hold no word or label, or no file was decoded"

    def lines(self) -> list[str]:
        summary = self.summary()
        lines = []
        if "reference_units" in summary:
            errors = (
                summary["substitutions"] + summary["deletions"] + summary["insertions"]
            )
            lines.append(
                f"{self.metric.upper()} {summary[self.metric]:.2f}% ({errors} errors / "
                f"{summary['reference_units']} {'units' if self.cjk else 'words'}: "
                f"{summary['substitutions']} sub, {summary['deletions']} del, {summary['insertions']} ins) "
                f"over {self.utterances} files, {self.protocol} protocol"
            )
        lines += [
            f"{kind} accuracy {summary[f'{kind}_accuracy']:.2f}% ({self.label_hits[kind]}/{total})"
            for kind, total in self.label_totals.items()
        ]
        if self.skipped:
            lines.append(
                f"{self.skipped} file{'s' * (self.skipped > 1)} skipped (unreadable or a bad list line): "
                f"a skipped file with a reference counts as all deletions and wrong labels"
            )
        return lines
