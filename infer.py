"""Run OSUM on audio: every task from one command, structured results, batches, long audio and scores.

    python infer.py audio.wav --task srwt --srt          # timed words, and audio.srt next to the audio
    python infer.py clips/ --task ser --json > out.jsonl # a directory, one JSON object per file
    python infer.py test.jsonl --task asr --score-only   # wenet list {"key","wav","txt"}: WER/CER only
    python infer.py audio.wav --prompt "请描述这段音频。"   # any prompt instead of a task

Files are decoded in batches of similar length and printed in input order. Audio longer than 30 s is cut at quiet
points into windows that are decoded together and joined. A file that cannot be read is reported and skipped
(exit code 1 at the end); a usage problem stops at once with one line (exit code 2).
"""

import argparse
import json
import math
import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from osum_min.inference import ranks
from osum_min.cli import (
    DTYPES,
    OneLineParser,
    add_precision_flags,
    device_problem,
    lowest_problem,
    weights_path,
)
from osum_min.config_check import ConfigError
from osum_min.data.formats import DataError
from osum_min.files import FileError, printable, writable_folder
from osum_min.weights import weights_problem
from osum_min.model.generate import (
    DEFAULT_DECODING,
    ORIGINAL_DECODING,
    GenerationConfig,
)
from osum_min.inference.inputs import Item, collect_inputs
from osum_min.model.osum import OSUM, load_for_inference
from osum_min.inference.pipeline import Answer, Pipeline, Request, RequestError
from osum_min.progress import Progress, status
from osum_min.eval.scoring import PROTOCOLS, Scorer
from osum_min.inference.subtitles import subtitle_paths, subtitles
from osum_min.text.tasks import TASKS, Task, free_prompt_task, parse_prompt_ids
from osum_min.text.tokenizer import (
    EOD_ID,
    Tokenizer,
    eod_outside_vocabulary,
    tokenizer_or_none,
)

ROOT = Path(__file__).resolve().parent
# The web demo's example clips: the repository's short recordings, and two more once tests/assets.py fetched them.
# 53 s: two windows
WEB_EXAMPLES = [
    (ROOT / "tests/fixtures/fixture_a/audio.wav", "asr"),
    (ROOT / "tests/fixtures/fixture_a/audio_batch_item1.wav", "ser"),
    (ROOT / "tests/.assets/arctic_a0007.wav", "srwt"),
    (ROOT / "tests/.assets/sonnet1.wav", "asr"),
]


class UsageError(ValueError):
    """A problem with the command itself: reported in one line, exit code 2."""


# GenerationConfig's fields and the flags that set them
DECODING_FLAGS = {
    "num_beams": "beams",
    "do_sample": "sample",
    "temperature": "temperature",
    "top_k": "top_k",
    "top_p": "top_p",
    "repetition_penalty": "repetition_penalty",
    "max_new_tokens": "max_new_tokens",
    "seed": "seed",
}


def decoding_config(args, eos_id: int) -> GenerationConfig:
    """DEFAULT_DECODING (beam 4, penalty 1.05, no sampling) or the original's beam-sample, then the flags,
    checked by GenerationConfig's own rule (its message under the flag's name)."""
    base = ORIGINAL_DECODING if args.original_decoding else DEFAULT_DECODING
    flags = {field: getattr(args, flag) for field, flag in DECODING_FLAGS.items()}
    flags["do_sample"] = args.sample or None
    if args.stream:
        if (args.beams or 1) > 1:
            raise UsageError(
                "--stream prints tokens as they come, which beam search cannot: use --beams 1"
            )
        flags["num_beams"] = 1
    given = {k: v for k, v in flags.items() if v is not None}
    try:
        return replace(base, eos_token_id=eos_id, **given)
    except ConfigError as err:
        flag = "--" + DECODING_FLAGS.get(err.field, err.field).replace("_", "-")
        raise UsageError(str(ConfigError(flag, err.value, err.requirement))) from None


def load(args) -> tuple[OSUM, Tokenizer | None]:
    weights = Path(args.weights)
    # one check, one message, for every front end
    if problem := weights_problem(weights):
        raise UsageError(problem)
    tokenizer = tokenizer_or_none(weights)
    if tokenizer is None and not (args.prompt_ids and args.ids):
        raise UsageError(
            f"{weights}/ has no tokenizer: pass --prompt-ids and --ids, or convert with --tokenizer DIR"
        )
    try:
        model = load_for_inference(
            weights,
            tokenizer,
            device=args.device,
            dtype=DTYPES[args.dtype] if args.dtype else None,
            compile=args.compile,
            quantize=args.quantize,
        )
    except (OSError, ValueError, RuntimeError) as err:
        raise UsageError(
            f"cannot load {weights}/: {' '.join(str(err).split())}"
        ) from None
    eod_problem = eod_outside_vocabulary(
        model.config.eod_id, model.config.llm.vocab_size, weights / "config.json"
    )
    # text output that never ends; a model of ids (a fixture) is meant so
    if tokenizer is not None and eod_problem:
        print(f"infer.py: warning: {eod_problem}", file=sys.stderr)
    return model, tokenizer


def flag_problem(args) -> str | None:
    """What is wrong with a number on the command line, found before anything is loaded (None: nothing)."""
    if problem := lowest_problem(args, {"batch_size": 1}):
        return problem
    try:
        decoding_config(args, EOD_ID)
    except UsageError as err:
        return str(err)
    for flag, value in (
        ("--max-upload-mb", args.max_upload_mb),
        ("--max-audio-seconds", args.max_audio_seconds),
    ):
        if not 0 < value < math.inf:
            return f"{flag} must be a finite number above 0, got {value:g}"
    if args.port is not None and not 0 <= args.port <= 65535:
        return f"--port must be from 0 to 65535, got {args.port}"
    return device_problem(args.device)


def parse_args(argv):
    parser = OneLineParser(
        prog="infer.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "inputs",
        nargs="*",
        help="audio files, directories, or lists (paths or wenet jsonl)",
    )
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--task", default="asr", help="one of --list-tasks (default asr)")
    what.add_argument("--prompt", help="free prompt text instead of a task")
    what.add_argument(
        "--prompt-ids",
        help="prompt as comma-separated token ids (debugging, tokenizer-less models)",
    )
    parser.add_argument(
        "--list-tasks", action="store_true", help="print the task table and exit"
    )
    parser.add_argument(
        "--ids", action="store_true", help="print generated token ids instead of text"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per file")
    parser.add_argument(
        "--srt",
        nargs="?",
        const="",
        metavar="DIR",
        help="srwt: write FILE.srt (next to the audio or in DIR)",
    )
    parser.add_argument(
        "--vtt",
        nargs="?",
        const="",
        metavar="DIR",
        help="srwt: write FILE.vtt likewise",
    )
    parser.add_argument(
        "--score-only",
        action="store_true",
        help="print only the WER/CER and label accuracy summary",
    )
    parser.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default="osum",
        help="scoring rules: osum (compute-wer.py --char=1, the default) or qwen2-audio (its "
        "normalisers; docs/evaluation.md)",
    )
    parser.add_argument(
        "--language",
        help="qwen2-audio scoring: the references' language (en, zh, yue, fr, ...)",
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--stream",
        action="store_true",
        help="print tokens as they come (one file, --beams 1)",
    )
    decoding = parser.add_argument_group(
        "decoding (default: beam 4, repetition penalty 1.05, no sampling)"
    )
    decoding.add_argument("--beams", type=int)
    decoding.add_argument("--sample", action="store_true")
    decoding.add_argument("--temperature", type=float)
    decoding.add_argument("--top-k", type=int)
    decoding.add_argument("--top-p", type=float)
    decoding.add_argument("--repetition-penalty", type=float)
    decoding.add_argument("--max-new-tokens", type=int)
    decoding.add_argument("--seed", type=int)
    decoding.add_argument(
        "--original-decoding",
        action="store_true",
        help="the original's beam-sample (top-k 5, top-p 0.9)",
    )
    parser.add_argument(
        "--web",
        action="store_true",
        help="serve the web demo (pip install .[demo]) instead",
    )
    parser.add_argument(
        "--serve",
        action="store_true",
        help="serve the OpenAI-compatible API instead (pip install .[serve]; docs/serving.md)",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="--web/--serve: address to listen on"
    )
    parser.add_argument(
        "--port", type=int, help="--web/--serve: port (default 7860 / 8000)"
    )
    parser.add_argument(
        "--api-key",
        help="--serve: require Authorization: Bearer KEY (default: $OSUM_API_KEY)",
    )
    parser.add_argument(
        "--max-upload-mb",
        type=float,
        default=25.0,
        help="--serve: upload cap (default 25)",
    )
    parser.add_argument(
        "--max-audio-seconds",
        type=float,
        default=600.0,
        help="--serve: duration cap (default 600)",
    )
    parser.add_argument(
        "--weights",
        default="weights/osum",
        help="a model directory, or mini: weights/osum-mini",
    )
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    add_precision_flags(parser)
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        help="decode steps through torch.compile (warm-up: see README); default: CUDA graphs on "
        "CUDA, eager on CPU; --no-compile: eager everywhere",
    )
    args = parser.parse_args(argv)
    if problem := flag_problem(args):
        parser.error(problem)
    return args


def resolve_task(args) -> Task:
    if args.prompt is not None and not args.prompt.strip():
        raise UsageError("--prompt is empty: give some prompt text, or a --task")
    subtitles_wanted = args.srt is not None or args.vtt is not None
    if args.prompt is not None or args.prompt_ids:
        if subtitles_wanted:
            raise UsageError(
                "--srt/--vtt need --task srwt (a free prompt has no timestamps to write)"
            )
        return free_prompt_task(args.prompt or args.prompt_ids)
    if args.task not in TASKS:
        raise UsageError(
            f"unknown task {args.task!r}: choose one of {', '.join(TASKS)} (or --prompt TEXT)"
        )
    if subtitles_wanted and TASKS[args.task].output != "srwt":
        raise UsageError("--srt/--vtt need --task srwt (the only task with timestamps)")
    return TASKS[args.task]


def given_prompt_ids(args) -> list[int] | None:
    if not args.prompt_ids:
        return None
    try:
        return parse_prompt_ids(args.prompt_ids)
    except ValueError as err:
        raise UsageError(f"--prompt-ids: {err}") from None


def check_combinations(args, items: list[Item]) -> None:
    """Flags that cannot do what they say with these inputs, refused before anything is loaded."""
    if args.json and args.stream:
        raise UsageError(
            "--json and --stream: choose one (--stream prints tokens as they come, not JSON)"
        )
    if args.score_only and not any(item.reference is not None for item in items):
        raise UsageError(
            '--score-only needs references: a wenet list whose lines have "txt"'
        )
    for flag, folder in (("--srt", args.srt), ("--vtt", args.vtt)):
        try:
            if folder:  # made when missing
                writable_folder(folder, "subtitles")
        except FileError as err:
            raise UsageError(f"{flag} {err}") from None
        if folder and not os.access(folder, os.W_OK | os.X_OK):
            raise UsageError(f"{flag} {folder}: the folder is not writable")


def one_line(text: str) -> str:
    """A key or text in the `key<TAB>text` output, with tabs and line breaks escaped so one file is one line."""
    return (
        text.replace("\\", "\\\\")
        .replace("\t", "\\t")
        .replace("\n", "\\n")
        .replace("\r", "\\r")
    )


def write_subtitles(answer: Answer, paths: list[Path | None]) -> str | None:
    """Write this file's subtitles as soon as it is decoded; a failed write is this file's problem only."""
    for path in paths:
        if path is None or answer.result is None or answer.result.words is None:
            continue
        try:
            path.write_text(
                subtitles(answer.result.words, vtt=path.suffix == ".vtt"),
                encoding="utf-8",
            )
        except OSError as err:
            return f"{path}: cannot write ({err.strerror or err})"
    return None


def decode_share(
    pipeline: Pipeline,
    items: list[Item],
    requests: list[Request],
    share: list[int],
    on_token,
):
    """(index, Answer) for this rank's share of the files; a bad list line is an error without decoding."""
    good = [i for i in share if items[i].problem is None]
    for i in share:
        if items[i].problem is not None:
            yield (
                i,
                Answer(
                    items[i].path,
                    requests[i].task,
                    error=RequestError(items[i].path, items[i].problem),
                ),
            )
    for j, answer in pipeline.run([requests[i] for i in good], on_token):
        yield good[j], answer


def gathered(
    pipeline: Pipeline,
    requests: list[Request],
    prompt_ids: list[int],
    outcomes,
    progress,
):
    """Every rank's answers at rank 0 (None elsewhere): the ranks send ids, rank 0 parses them."""
    mine = []
    for index, answer in outcomes:
        mine.append((index, answer.error or answer.decoded))
        if progress:
            progress.update()
    if progress:
        progress.close()
    pairs = ranks.gather_outcomes(mine)
    if ranks.world()[0] != 0:
        return None
    return [
        (
            index,
            Answer(requests[index].label, requests[index].task, error=outcome)
            if isinstance(outcome, RequestError)
            else pipeline.answer(requests[index], prompt_ids, outcome),
        )
        for index, outcome in pairs
    ]


@dataclass
class Run:
    """A checked command with its model loaded: the files, one request each, and the pipeline that decodes them."""

    task: Task
    items: list[Item]
    requests: list[Request]
    pipeline: Pipeline
    prompt_ids: list[int]


def prepare(args) -> Run:
    """Everything a usage error can stop, before any audio is decoded."""
    task = resolve_task(args)
    given_ids = given_prompt_ids(args)
    items = collect_inputs(args.inputs)
    if not items:
        raise UsageError("no audio files given (pass files, directories or a list)")
    check_combinations(args, items)
    if args.stream and len(items) > 1:
        raise UsageError("--stream decodes one file at a time: give one file")
    # long audio: stream the windows one after another
    args.batch_size = 1 if args.stream else args.batch_size
    if ranks.world()[1] > 1 and args.stream:
        raise UsageError(
            "--stream prints one file as it decodes: run it in one process, not torchrun"
        )
    args.device = ranks.start(args.device)
    if ranks.world()[0] == 0 and (sys.stderr.isatty() or len(items) > 3):
        status(
            f"infer.py: loading {args.weights}/ for {len(items)} file{'s' * (len(items) > 1)}"
        )
    model, tokenizer = load(args)
    if args.score_only and tokenizer is None:
        raise UsageError(
            f"--score-only scores text, and {args.weights}/ has no tokenizer"
        )
    pipeline = Pipeline(model, tokenizer, args.batch_size)
    decoding = decoding_config(args, model.config.eod_id)
    requests = [
        Request(item.path, task=task, prompt_ids=given_ids, config=decoding)
        for item in items
    ]
    try:
        # the same for every file: checked once, as a usage error
        prompt_ids = pipeline.prompt_ids(requests[0])
    except RequestError as err:
        raise UsageError(
            err.problem if given_ids is None else f"--prompt-ids: {err.problem}"
        ) from None
    return Run(task, items, requests, pipeline, prompt_ids)


class Report:
    """Each answer as it comes: scored, its subtitles written, its line printed in input order."""

    def __init__(self, args, run: Run):
        self.args, self.items, self.failures, self.pending, self.next_to_print = (
            args,
            run.items,
            0,
            {},
            0,
        )
        has_references = any(item.reference is not None for item in run.items)
        scoring = args.score_only or run.pipeline.tokenizer and has_references
        self.scorer = (
            Scorer(run.task, args.protocol, args.language) if scoring else None
        )
        paths = [item.path for item in run.items]
        self.subtitle_files = [
            subtitle_paths(paths, folder, suffix)
            if folder is not None
            else [None] * len(paths)
            for folder, suffix in ((args.srt, ".srt"), (args.vtt, ".vtt"))
        ]

    def add(self, index: int, answer: Answer) -> None:
        args, item = self.args, self.items[index]
        if answer.error:
            self.failures += 1
            print(f"infer.py: skipped {answer.error}", file=sys.stderr)
            if self.scorer:
                self.scorer.skipped += 1
                # all deletions, wrong labels: never dropped
                if item.reference is not None:
                    self.scorer.add(item.reference, None)
            line = (
                json.dumps(
                    {"file": printable(item.path), "error": str(answer.error)},
                    ensure_ascii=False,
                )
                if args.json
                else None
            )
        else:
            if problem := write_subtitles(
                answer, [files[index] for files in self.subtitle_files]
            ):
                self.failures += 1
                print(f"infer.py: {problem}", file=sys.stderr)
            if self.scorer and item.reference is not None:
                self.scorer.add(item.reference, answer.result)
            record = {
                "file": printable(item.path),
                **({"key": item.key} if item.key != item.path else {}),
                **answer.to_json(with_ids=args.ids),
            }
            text = (
                " | ".join(" ".join(map(str, ids)) for ids in answer.decoded.ids)
                if args.ids
                else answer.result.to_text()
            )
            line = (
                json.dumps(record, ensure_ascii=False)
                if args.json
                else text
                if len(self.items) == 1
                else f"{one_line(item.key)}\t{one_line(text)}"
            )
            line = None if args.score_only or args.stream else line
        self.pending[index] = line
        while self.next_to_print in self.pending:
            line = self.pending.pop(self.next_to_print)
            if line is not None:
                print(line, flush=True)
            self.next_to_print += 1

    def finish(self) -> int:
        """Print the scores; the exit code: 0 all decoded, 1 some failed, 2 none decoded."""
        problem = self.scorer and self.scorer.problem()
        if problem:  # never a figure over nothing; an error where the score is all that was asked
            print(
                f"infer.py: {'error' if self.args.score_only else 'warning'}: no score: {problem}",
                file=sys.stderr,
            )
            if self.args.score_only:
                return 2
        elif self.scorer:
            print(
                json.dumps({"summary": self.scorer.summary()})
                if self.args.json
                else "\n".join(self.scorer.lines())
            )
        return 2 if self.failures == len(self.items) else 1 if self.failures else 0


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        args.weights = weights_path(args.weights)
    except (ValueError, OSError) as err:
        print(f"infer.py: error: {err}", file=sys.stderr)
        return 2
    if args.list_tasks:
        for task in TASKS.values():
            print(f"{task.name:22} {task.tag:38} {task.prompt}")
        return 0
    if args.web:
        from osum_min.serve.web import DemoUnavailable, serve

        try:
            return serve(
                args.weights,
                host=args.host,
                port=7860 if args.port is None else args.port,
                device=args.device,
                dtype=DTYPES[args.dtype] if args.dtype else None,
                quantize=args.quantize,
                examples=WEB_EXAMPLES,
                batch_size=args.batch_size,
            )
        except DemoUnavailable as err:
            print(f"infer.py: error: {err}", file=sys.stderr)
            return 2
    if args.serve:
        try:
            from osum_min.serve.server import ServerConfig, serve
        except ImportError as err:
            print(f"infer.py: error: {err}", file=sys.stderr)
            return 2
        if problem := weights_problem(args.weights):  # load()'s check and message
            print(f"infer.py: error: {problem}", file=sys.stderr)
            return 2
        try:
            config = ServerConfig(
                api_key=args.api_key,
                batch_size=args.batch_size,
                max_upload_mb=args.max_upload_mb,
                max_audio_seconds=args.max_audio_seconds,
                max_new_tokens=args.max_new_tokens or 400,
            )
        except ConfigError as err:
            flag = "--" + err.field.replace("_", "-")
            print(
                f"infer.py: error: {ConfigError(flag, err.value, err.requirement)}",
                file=sys.stderr,
            )
            return 2
        return serve(
            args.weights,
            args.host,
            8000 if args.port is None else args.port,
            args.device,
            DTYPES[args.dtype] if args.dtype else None,
            args.compile,
            args.quantize,
            config,
        )
    try:
        run = prepare(args)
    except (UsageError, DataError) as err:
        print(f"infer.py: error: {err}", file=sys.stderr)
        return 2

    on_token, stream = None, None
    if args.stream:
        stream = (
            run.pipeline.tokenizer.stream_decoder()
            if run.pipeline.tokenizer and not args.ids
            else None
        )
        on_token = lambda index, token: print(  # noqa: E731
            stream.push(token) if stream else f"{token} ", end="", flush=True
        )
    rank, world_size, _ = ranks.world()
    share = ranks.balanced_share([item.seconds for item in run.items], rank, world_size)
    progress = (
        Progress(
            len(share),
            "files" if world_size == 1 else f"files, rank {rank} of {world_size}",
        )
        if (len(share) > 3 or sys.stderr.isatty()) and not args.stream and rank == 0
        else None
    )
    outcomes = decode_share(run.pipeline, run.items, run.requests, share, on_token)
    # every rank decodes its share; rank 0 reports them all, as one process would
    if world_size > 1:
        outcomes, progress = (
            gathered(run.pipeline, run.requests, run.prompt_ids, outcomes, progress),
            None,
        )
        if outcomes is None:
            ranks.finish()
            return 0
    report = Report(args, run)
    for index, answer in outcomes:
        report.add(index, answer)
        if progress:
            progress.update()
    if progress:
        progress.close()
    if args.stream:
        print(stream.finish() if stream else "")
    code = report.finish()
    ranks.finish()
    return code


if __name__ == "__main__":
    sys.exit(main())
