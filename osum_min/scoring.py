"""Scores against references: WER for English, CER for Mandarin and mixed text, accuracy per label kind.

Mixed Mandarin/English is scored the way the OSUM authors' `compute-cer.py` counts it: every CJK character is one
unit and every Latin-script word is one unit, so a purely English reference gives WER and a Chinese one gives CER.
The edit distance is written here rather than taken from `jiwer`: it is a dozen lines, `jiwer` would be a runtime
dependency (with a compiled `rapidfuzz` under it) outside torch/numpy, and its tokenisation does not split mixed
scripts this way, so we would tokenise ourselves anyway.
"""
import re
from dataclasses import dataclass, field

from osum_min.tasks import CJK_CHARS, Result, Task, parse
from osum_min.tokenizer import map_style_tags, process_text

_CJK = re.compile(f"[{CJK_CHARS}]")
# One CJK character, or one run of other letters/digits/apostrophes; punctuation and spacing never count.
_UNIT = re.compile(f"[{CJK_CHARS}]|[^\\W_{CJK_CHARS}]+(?:'[^\\W_{CJK_CHARS}]+)*")


def scoring_units(text: str) -> list[str]:
    return _UNIT.findall(text)


@dataclass
class Edits:
    substitutions: int = 0
    deletions: int = 0
    insertions: int = 0

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions


def edit_distance(reference: list[str], hypothesis: list[str]) -> Edits:
    """Levenshtein alignment counting substitutions, deletions and insertions (one row at a time)."""
    previous = [(j, 0, 0, j) for j in range(len(hypothesis) + 1)]  # (errors, subs, dels, ins)
    for i, ref_unit in enumerate(reference, 1):
        current = [(i, 0, i, 0)]
        for j, hyp_unit in enumerate(hypothesis, 1):
            diagonal = previous[j - 1]
            if ref_unit != hyp_unit:
                diagonal = (diagonal[0] + 1, diagonal[1] + 1, diagonal[2], diagonal[3])
            deletion = (previous[j][0] + 1, previous[j][1], previous[j][2] + 1, previous[j][3])
            insertion = (current[j - 1][0] + 1, current[j - 1][1], current[j - 1][2], current[j - 1][3] + 1)
            current.append(min(diagonal, deletion, insertion))
        previous = current
    _, subs, dels, ins = previous[-1]
    return Edits(subs, dels, ins)


def normalise(text: str) -> str:
    """The original's label normalisation (docs/original.md §8), applied to references and hypotheses alike."""
    return map_style_tags(process_text(text))


@dataclass
class Scorer:
    """Accumulates transcript edits and label hits over a test list; `summary()` gives the rates."""
    task: Task
    edits: Edits = field(default_factory=Edits)
    reference_units: int = 0
    cjk: bool = False
    label_hits: dict[str, int] = field(default_factory=dict)
    label_totals: dict[str, int] = field(default_factory=dict)
    utterances: int = 0
    skipped: int = 0  # files of the list that could not be read or scored: not in the rates above

    def add(self, reference_text: str, hypothesis: Result) -> None:
        reference = parse(self.task, normalise(reference_text))
        self.utterances += 1
        if self.task.transcript and reference.transcript is not None:
            ref_units = scoring_units(reference.transcript)
            hyp_units = scoring_units(normalise(hypothesis.transcript or ""))
            edits = edit_distance(ref_units, hyp_units)
            self.edits = Edits(self.edits.substitutions + edits.substitutions,
                               self.edits.deletions + edits.deletions, self.edits.insertions + edits.insertions)
            self.reference_units += len(ref_units)
            self.cjk = self.cjk or bool(_CJK.search(reference.transcript))
        for kind, label in reference.labels.items():
            self.label_totals[kind] = self.label_totals.get(kind, 0) + 1
            hit = hypothesis.labels.get(kind, "").lower() == label
            self.label_hits[kind] = self.label_hits.get(kind, 0) + hit

    @property
    def metric(self) -> str:
        return "cer" if self.cjk else "wer"

    def summary(self) -> dict:
        out = {"utterances": self.utterances, "skipped": self.skipped}
        if self.reference_units:
            out[self.metric] = round(100 * self.edits.errors / self.reference_units, 2)
            out.update(substitutions=self.edits.substitutions, deletions=self.edits.deletions,
                       insertions=self.edits.insertions, reference_units=self.reference_units)
        for kind, total in self.label_totals.items():
            out[f"{kind}_accuracy"] = round(100 * self.label_hits[kind] / total, 2)
        return out

    def lines(self) -> list[str]:
        summary = self.summary()
        lines = []
        if self.reference_units:
            lines.append(f"{self.metric.upper()} {summary[self.metric]:.2f}% ({self.edits.errors} errors / "
                         f"{self.reference_units} {'units' if self.cjk else 'words'}: {self.edits.substitutions} sub, "
                         f"{self.edits.deletions} del, {self.edits.insertions} ins) over {self.utterances} files")
        lines += [f"{kind} accuracy {summary[f'{kind}_accuracy']:.2f}% ({self.label_hits[kind]}/{total})"
                  for kind, total in self.label_totals.items()]
        if self.skipped:
            lines.append(f"{self.skipped} file{'s' * (self.skipped > 1)} skipped (unreadable or a bad list line): "
                         f"not scored")
        return lines
