"""`eval.py run`: decode a public test set through the request path and write its scores beside the published ones.

The run is resumable. Each decoded utterance is appended to `records.jsonl` (one JSON object a line, flushed at
once; under torchrun each rank appends to its own `records.rankN.jsonl`); a rerun reads what is there, drops a torn
last line, and decodes only the rest. At the end the records are rewritten in the set's order and `hyp.txt`,
`ref.txt` (the original's `key text` form), `results.json` and `results.md` are written from them, so an
interrupted run ends with the files of an uninterrupted one. Records hold no timings for that reason.
"""

import hashlib
import json
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch.distributed as dist

from ..inference import ranks
from .benchmarks import Subset, Utterance
from ..inference.pipeline import Pipeline, Request, request_seconds
from ..files import (
    MAX_CONFIG_BYTES,
    MAX_LIST_BYTES,
    FileError,
    atomic_write,
    os_problem,
    parse_json,
    printable,
    read_bytes,
    read_text,
)
from ..progress import Progress
from ..text.tasks import TASKS, Result, Task, free_prompt_task, parse

PUBLISHED = Path(__file__).with_name("published.json")
FIRST_TAG = re.compile(r"<([^<>]*)>")


@dataclass
class Record:
    """One decoded utterance as the run stores it: the texts that are scored, or why there is none."""

    subset: str
    key: str
    ref: str
    hyp: str | None = None
    error: str | None = None
    # SRWT: [reference, hypothesis] with their word times, for the timing error
    timed: list[str] | None = None


def subset_task(subset: Subset, utterance: Utterance) -> Task:
    prompt = utterance.prompt or subset.defaults.prompt
    return free_prompt_task(prompt) if prompt else TASKS[subset.defaults.task]


def scored_reference(text: str, task: Task, subset: Subset) -> str:
    """The reference as the metric reads it: a label (`<happy>` for compute-acc.py, bare for exact match), or the
    transcript without time tags or reply."""
    metric, protocol = subset.defaults.metric, subset.defaults.protocol
    if metric == "acc":
        tag = FIRST_TAG.search(text)
        label = (tag.group(1) if tag else text).strip()
        return f"<{label}>" if protocol == "osum" else label
    if metric in ("wer", "cer") and task.output != "text":
        return parse(task, text).transcript or ""
    return text


def scored_hypothesis(result: Result, task: Task, subset: Subset) -> str:
    """The hypothesis likewise: its first label (a free prompt's whole answer), or its transcript."""
    if subset.defaults.metric == "acc":
        label = (
            next(iter(result.labels.values()), "")
            if task.labels
            else (result.transcript or "").strip()
        )
        return f"<{label}>" if subset.defaults.protocol == "osum" else label
    return result.transcript or ""


RECORD_TEXTS = {
    "subset": (str,),
    "key": (str,),
    "ref": (str,),
    "hyp": (str, type(None)),
}


def parse_record(line: bytes) -> Record | None:
    """A records.jsonl line as a Record; None for anything else (garbage, `null`, another object, not UTF-8)."""
    try:
        row = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(row, dict) or not set(RECORD_TEXTS) - {"hyp"} <= set(row) <= set(
        Record.__annotations__
    ):
        return None
    timed = row.get("timed")
    if not all(
        isinstance(row.get(name), kinds) for name, kinds in RECORD_TEXTS.items()
    ) or not (
        timed is None
        or isinstance(timed, list)
        and len(timed) == 2
        and all(isinstance(t, str) for t in timed)
    ):
        return None
    if not isinstance(row.get("error"), (str, type(None))) or (
        row.get("hyp") is None
    ) == (row.get("error") is None):
        return None
    return Record(**row)


def read_records(out: Path, repair: bool = True) -> dict[tuple[str, str], Record]:
    """The records of earlier runs, by (subset, key), a decoded one before a failed one. A torn last line (a killed
    run) is ignored, and with `repair` cut off its file; any other line that is not a record (a disk error, an edit)
    is ignored with a warning naming it (with `repair`), so its utterance is decoded again."""
    records = {}
    for path in sorted(out.glob("records*.jsonl")):
        data = read_bytes(path, "records file", MAX_LIST_BYTES)
        if data and not data.endswith(b"\n"):
            data = data[: data.rfind(b"\n") + 1]
            if repair:
                with atomic_write(path) as sink:
                    sink.write(data)
        for number, line in enumerate(data.splitlines(), 1):
            record = parse_record(line)
            if record is None:
                if repair:
                    print(
                        f"eval.py: warning: {printable(path)}:{number}: not a record "
                        f"({printable(line[:40].decode('utf-8', 'replace'))!r}): ignored, its utterance "
                        "is decoded again",
                        file=sys.stderr,
                    )
                continue
            if record.error is None or (record.subset, record.key) not in records:
                records[record.subset, record.key] = record
    return records


FINGERPRINT = "run.json"


def fingerprint(
    bench: str, subsets: list[Subset], decoding: dict, weights: Path
) -> dict:
    """What makes two runs the same run, so a resume may reuse the records: the set and its utterances (keys,
    references, spans, prompts: a hash), how each subset is decoded and scored, the decoding settings and the
    weights (their config's hash and every file's size). Not --limit, --batch-size or the device."""
    utterances = json.dumps(
        [
            [s.name, u.key, u.reference, u.start, u.end, u.prompt]
            for s in subsets
            for u in s.utterances
        ]
    )
    files = (
        sorted(p for p in weights.iterdir() if p.is_file()) if weights.is_dir() else []
    )
    return {
        "bench": bench,
        **{
            name: sorted({str(getattr(s.defaults, name)) for s in subsets})
            for name in asdict(subsets[0].defaults)
        },
        "decoding": decoding,
        "weights": {
            "config.json sha256": hashlib.sha256(
                (weights / "config.json").read_bytes()
            ).hexdigest(),
            "files": {p.name: p.stat().st_size for p in files},
        },
        "utterances sha256": hashlib.sha256(
            utterances.encode("utf-8", "backslashreplace")
        ).hexdigest(),
    }


def claim(out: Path, mine: dict, write: bool) -> None:
    """Refuse to resume into `out` unless its records are of this run (FileError naming what differs); `write`
    (rank 0): store this run's fingerprint there."""
    path = out / FINGERPRINT
    if path.exists():
        stored = parse_json(read_text(path, "run fingerprint", MAX_CONFIG_BYTES), path)
        stored = stored if isinstance(stored, dict) else {}
        differs = [name for name in mine if stored.get(name) != mine[name]]
        if differs:
            said = ", ".join(
                f"{name} {_short(stored.get(name))} -> {_short(mine[name])}"
                for name in differs
            )
            raise FileError(
                out,
                f"holds another run's records ({said}): give another --out, or empty this one",
            )
        return
    if any(out.glob("records*.jsonl")):
        raise FileError(
            out,
            f"holds records but no {FINGERPRINT} to tell which run made them: give another --out, "
            "or empty this one",
        )
    if write:
        with atomic_write(path) as sink:
            sink.write(json.dumps(mine, indent=1).encode("utf-8"))


def _short(value) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


def request(subset: Subset, utterance: Utterance, config) -> Request:
    """A path, or a segment of one (WenetSpeech's opus files hold many utterances), read when its batch is."""
    span = None if utterance.start is None else (utterance.start, utterance.end)
    return Request(
        utterance.audio,
        task=subset_task(subset, utterance),
        config=config,
        span=span,
        name=f"{utterance.key} ({utterance.audio})",
    )


def decode(
    pipeline: Pipeline, subsets: list[Subset], out: Path, config, limit=None
) -> int:
    """Decode what earlier runs left (at most `limit` utterances of the set, counted from its start), this rank's
    share of it, appending a record per utterance. Returns how many this rank decoded."""
    rank, size, _ = ranks.world()
    # A failed clip is tried again. Every rank reads the same records before any rank appends, so all agree on the
    # shares; rank 0 alone cuts a torn last line, first.
    if size > 1 and rank != 0:
        dist.barrier()
    done = {
        key
        for key, record in read_records(out, repair=rank == 0).items()
        if record.error is None
    }
    if size > 1:
        if rank == 0:
            dist.barrier()
        dist.barrier()
    wanted = [(s, u) for s in subsets for u in s.utterances][:limit]
    todo = [(s, u) for s, u in wanted if (s.name, u.key) not in done]
    requests = [request(s, u, config) for s, u in todo]
    share = ranks.balanced_share([request_seconds(r) for r in requests], rank, size)
    progress = Progress(
        len(share), "utterances" if size == 1 else f"utterances, rank {rank} of {size}"
    )
    name = "records.jsonl" if size == 1 else f"records.rank{rank}.jsonl"
    with open(out / name, "a", encoding="utf-8") as sink:
        for index, answer in pipeline.run([requests[i] for i in share]):
            (subset, utterance), task = todo[share[index]], requests[share[index]].task
            record = Record(
                subset.name,
                utterance.key,
                scored_reference(utterance.reference, task, subset),
            )
            if answer.error:
                record.error = str(answer.error)
            else:
                record.hyp = scored_hypothesis(answer.result, task, subset)
                if answer.result.words is not None:
                    record.timed = [utterance.reference, answer.result.to_text()]
            if record.error:
                print(f"eval.py: skipped {record.error}", file=sys.stderr)
            try:
                sink.write(json.dumps(asdict(record), ensure_ascii=False) + "\n")
                sink.flush()
            # a full disk: what is written stays, the same command resumes
            except OSError as err:
                raise FileError(
                    out / name, f"cannot write: {os_problem(err)}"
                ) from None
            progress.update()
    progress.close()
    return len(share)


def published_rows(bench: str) -> dict[str, dict]:
    return {
        row["subset"]: row
        for row in json.loads(PUBLISHED.read_text(encoding="utf-8"))["rows"]
        if row["bench"] == bench
    }


def timing(records: list[Record], word_times: dict | None) -> dict | None:
    """SRWT's word-time error (osum_min/eval/word_timing.py) against `word_times` (read_word_times: a TextGrid or JSONL)
    or, without them, the times written in the references; None where no reference has times."""
    timed = {r.key: r.timed for r in records if r.timed}
    if not timed:
        return None
    # praatio, where TextGrids are read, is the [eval] extra's
    from .word_timing import (
        score_timing,
    )

    written = {
        key: parse(TASKS["srwt"], reference).words
        for key, (reference, _) in timed.items()
    }
    references = word_times or {
        key: words
        for key, words in written.items()
        if any(w.start is not None for w in words)
    }
    if not references:
        return None
    return score_timing(
        references,
        {
            key: parse(TASKS["srwt"], hypothesis)
            for key, (_, hypothesis) in timed.items()
        },
    )


def finish(
    bench: str,
    subsets: list[Subset],
    out: Path,
    limit=None,
    word_times: dict | None = None,
) -> dict:
    """Rank 0, after every rank is done: the records in the set's order, the text files, the scores, the table."""
    # the [eval] extra's scorers, outside inference's imports
    from .scoring import (
        NothingToScore,
        score_texts,
    )

    records = read_records(out, repair=False)
    wanted = [(s, u) for s in subsets for u in s.utterances][:limit]
    ordered = [
        records.get((s.name, u.key))
        or Record(s.name, u.key, u.reference, error="not decoded")
        for s, u in wanted
    ]
    _write(
        out / "records.jsonl",
        "".join(json.dumps(asdict(r), ensure_ascii=False) + "\n" for r in ordered),
    )
    for path in out.glob("records.rank*.jsonl"):  # now in records.jsonl
        path.unlink()
    by_subset = {s.name: s for s in subsets}
    _write(out / "ref.txt", "".join(f"{r.key} {one_line(r.ref)}\n" for r in ordered))
    _write(
        out / "hyp.txt",
        "".join(f"{r.key} {one_line(r.hyp)}\n" for r in ordered if r.error is None),
    )
    published, rows = published_rows(bench), []
    for name in dict.fromkeys(r.subset for r in ordered):
        mine = [r for r in ordered if r.subset == name]
        defaults = by_subset[name].defaults
        try:  # a failed utterance has no hypothesis: all deletions (score_texts' one rule)
            score = score_texts(
                {r.key: r.ref for r in mine},
                {r.key: r.hyp for r in mine if r.error is None},
                defaults.protocol,
                defaults.metric,
                defaults.language,
                defaults.bleu_tokenize,
            )
        except NothingToScore as err:
            score = {"problem": str(err)}
        rows.append(
            {
                "bench": bench,
                "subset": name,
                **asdict(defaults),
                "utterances": len(mine),
                "failed": [
                    {"key": r.key, "error": r.error}
                    for r in mine
                    if r.error is not None
                ],
                "value": score.get("value"),
                "score": score,
                "published": published.get(name, {}),
            }
        )
        if word_timing := timing(mine, word_times):
            rows[-1]["timing"] = word_timing
    results = {"bench": bench, "rows": rows}
    _write(
        out / "results.json", json.dumps(results, ensure_ascii=False, indent=1) + "\n"
    )
    _write(out / "results.md", table(rows))
    return results


def _write(path: Path, text: str) -> None:
    """A result file written whole or not at all (a full disk leaves the records it is made from intact)."""
    with atomic_write(path) as sink:
        sink.write(text.encode("utf-8"))


def one_line(text: str) -> str:
    """A text on one `key text` line: line breaks and runs of spaces as one space (no scorer counts spacing)."""
    return " ".join(text.split())


def table(rows: list[dict]) -> str:
    """The seed's table shape: task, dataset, metric, ours, and the published OSUM and Qwen2-Audio figures."""
    lines = [
        "| task | dataset | metric | ours | OSUM (published) | Qwen2-Audio (published) | utterances | failed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        ours = "–" if row["value"] is None else f"{row['value']:.2f}"
        published = row["published"]
        # covost2: s2tt by its prompt
        task = published.get("task", "prompt") if row["prompt"] else row["task"]
        lines.append(
            f"| {task} | {row['bench']} {row['subset']} | "
            f"{row['metric']} ({row['protocol']}) | {ours} | {published.get('osum', '–')} | "
            f"{published.get('qwen2_audio', '–')} | {row['utterances']} | {len(row['failed'])} |"
        )
    return (
        "\n".join(lines)
        + "\n\nPublished figures: osum_min/eval/published.json (its `sources`).\n"
    )
