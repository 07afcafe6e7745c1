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
import sys
from dataclasses import replace
from pathlib import Path

import torch

from osum_min import ranks
from osum_min.audio import AudioError
from osum_min.data_formats import DataError
from osum_min.generate import DEFAULT_DECODING, ORIGINAL_DECODING, GenerationConfig
from osum_min.inputs import Item, collect_inputs, decode_files
from osum_min.model import OSUM, load_for_inference
from osum_min.progress import Progress
from osum_min.scoring import Scorer
from osum_min.subtitles import subtitles
from osum_min.tasks import TASKS, Result, Task, free_prompt_task, parse_prompt_ids
from osum_min.tokenizer import Tokenizer, eod_outside_vocabulary, tokenizer_or_none
from osum_min.windows import Decoded

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16}
GET_WEIGHTS = ("get them with `python convert.py --download`, or convert the original's checkpoint with "
               "`python convert.py infer.pt --tokenizer QWEN2_TOKENIZER_DIR --out weights/osum`")
ROOT = Path(__file__).resolve().parent
# The web demo's example clips: the repository's short recordings, and two more once tests/assets.py fetched them.
WEB_EXAMPLES = [(ROOT / "tests/fixtures/fixture_a/audio.wav", "asr"),
                (ROOT / "tests/fixtures/fixture_a/audio_batch_item1.wav", "ser"),
                (ROOT / "tests/.assets/arctic_a0007.wav", "srwt"),
                (ROOT / "tests/.assets/sonnet1.wav", "asr")]  # 53 s: two windows


class UsageError(ValueError):
    """A problem with the command itself: reported in one line, exit code 2."""


def decoding_config(args, eos_id: int) -> GenerationConfig:
    """DEFAULT_DECODING (beam 4, penalty 1.05, no sampling) or the original's beam-sample, then the flags."""
    base = ORIGINAL_DECODING if args.original_decoding else DEFAULT_DECODING
    flags = {"num_beams": args.beams, "do_sample": args.sample or None, "temperature": args.temperature,
             "top_k": args.top_k, "top_p": args.top_p, "repetition_penalty": args.repetition_penalty,
             "max_new_tokens": args.max_new_tokens, "seed": args.seed}
    if args.stream:
        if (args.beams or 1) > 1:
            raise UsageError("--stream prints tokens as they come, which beam search cannot: use --beams 1")
        flags["num_beams"] = 1
    return replace(base, eos_token_id=eos_id, **{k: v for k, v in flags.items() if v is not None})


def load(args) -> tuple[OSUM, Tokenizer | None]:
    weights = Path(args.weights)
    if not (weights / "config.json").is_file():
        raise UsageError(f"no OSUM weights in {weights}/: {GET_WEIGHTS}")
    tokenizer = tokenizer_or_none(weights)
    if tokenizer is None and not (args.prompt_ids and args.ids):
        raise UsageError(f"{weights}/ has no tokenizer: pass --prompt-ids and --ids, or convert with --tokenizer DIR")
    try:
        model = load_for_inference(weights, tokenizer, device=args.device,
                                   dtype=DTYPES[args.dtype] if args.dtype else None, compile=args.compile,
                                   quantize=args.quantize)
    except (OSError, ValueError, RuntimeError) as err:
        raise UsageError(f"cannot load {weights}/: {' '.join(str(err).split())}") from None
    eod_problem = eod_outside_vocabulary(model.config.eod_id, model.config.llm.vocab_size, weights / "config.json")
    if tokenizer is not None and eod_problem:  # text output that never ends; a model of ids (a fixture) is meant so
        print(f"infer.py: warning: {eod_problem}", file=sys.stderr)
    return model, tokenizer


class OneLineParser(argparse.ArgumentParser):
    """argparse reporting a bad flag like every other usage error: one line, exit code 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


DEVICE_TYPES = ("cpu", "cuda", "mps")  # what the model is loaded and decoded on; torch names many more
SEEDS = range(-2**63, 2**64)  # what torch.Generator.manual_seed takes
LOWEST_TEMPERATURE = 1e-4  # below it dividing float32 logits can overflow: inf - inf = NaN probabilities


def device_problem(name: str | None) -> str | None:
    if name is None:
        return None
    try:
        device = torch.device(name)
    except RuntimeError:
        return f"--device {name}: not a torch device (cpu, cuda or cuda:N)"
    if device.type not in DEVICE_TYPES:
        return f"--device {name}: the model runs on {', '.join(DEVICE_TYPES)} only"
    if device.type == "cuda" and not torch.cuda.is_available():
        return f"--device {name}: this torch ({torch.__version__}) sees no CUDA device; use --device cpu"
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        return f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) visible"
    if device.type == "mps" and not torch.backends.mps.is_available():
        return f"--device {name}: this torch sees no Apple GPU; use --device cpu"
    return None


def flag_problem(args) -> str | None:
    """What is wrong with a number on the command line, found before anything is loaded (None: nothing)."""
    for flag, value in (("--batch-size", args.batch_size), ("--beams", args.beams),
                        ("--max-new-tokens", args.max_new_tokens)):
        if value is not None and value < 1:
            return f"{flag} must be at least 1, got {value}"
    if args.temperature is not None and not LOWEST_TEMPERATURE <= args.temperature < math.inf:
        return (f"--temperature must be above 0, finite and at least {LOWEST_TEMPERATURE} (sampling divides the "
                f"scores by it: a smaller one overflows them into NaN probabilities), got {args.temperature}")
    if args.top_k is not None and args.top_k < 0:
        return f"--top-k must be 0 (off) or more, got {args.top_k}"
    if args.top_p is not None and not 0 < args.top_p <= 1:
        return f"--top-p must be in (0, 1], got {args.top_p}"
    if args.repetition_penalty is not None and not 0 < args.repetition_penalty < math.inf:
        return f"--repetition-penalty must be above 0 and finite, got {args.repetition_penalty}"
    if args.seed is not None and args.seed not in SEEDS:
        return f"--seed must be a whole number from {SEEDS.start} to {SEEDS.stop - 1} (torch's range), got {args.seed}"
    if not 0 <= args.port <= 65535:
        return f"--port must be from 0 to 65535, got {args.port}"
    return device_problem(args.device)


def parse_args(argv):
    parser = OneLineParser(prog="infer.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="*", help="audio files, directories, or lists (paths or wenet jsonl)")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--task", default="asr", help="one of --list-tasks (default asr)")
    what.add_argument("--prompt", help="free prompt text instead of a task")
    what.add_argument("--prompt-ids", help="prompt as comma-separated token ids (debugging, tokenizer-less models)")
    parser.add_argument("--list-tasks", action="store_true", help="print the task table and exit")
    parser.add_argument("--ids", action="store_true", help="print generated token ids instead of text")
    parser.add_argument("--json", action="store_true", help="one JSON object per file")
    parser.add_argument("--srt", nargs="?", const="", metavar="DIR",
                        help="srwt: write FILE.srt (next to the audio or in DIR)")
    parser.add_argument("--vtt", nargs="?", const="", metavar="DIR", help="srwt: write FILE.vtt likewise")
    parser.add_argument("--score-only", action="store_true", help="print only the WER/CER and label accuracy summary")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--stream", action="store_true", help="print tokens as they come (one file, --beams 1)")
    decoding = parser.add_argument_group("decoding (default: beam 4, repetition penalty 1.05, no sampling)")
    decoding.add_argument("--beams", type=int)
    decoding.add_argument("--sample", action="store_true")
    decoding.add_argument("--temperature", type=float)
    decoding.add_argument("--top-k", type=int)
    decoding.add_argument("--top-p", type=float)
    decoding.add_argument("--repetition-penalty", type=float)
    decoding.add_argument("--max-new-tokens", type=int)
    decoding.add_argument("--seed", type=int)
    decoding.add_argument("--original-decoding", action="store_true",
                          help="the original's beam-sample (top-k 5, top-p 0.9)")
    parser.add_argument("--web", action="store_true", help="serve the web demo (pip install .[demo]) instead")
    parser.add_argument("--host", default="127.0.0.1", help="--web: address to listen on")
    parser.add_argument("--port", type=int, default=7860, help="--web: port")
    parser.add_argument("--weights", default="weights/osum")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="default bf16 on GPU, fp32 on CPU")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction,
                        help="decode steps through torch.compile (warm-up: see README); default: CUDA graphs on "
                             "CUDA, eager on CPU; --no-compile: eager everywhere")
    parser.add_argument("--quantize", choices=["int8"],
                        help="int8: LLM linears stored as int8 (a quarter of fp32, half of bf16; see README)")
    args = parser.parse_args(argv)
    if problem := flag_problem(args):
        parser.error(problem)
    return args


def resolve_task(args) -> Task:
    if args.prompt is not None or args.prompt_ids:
        return free_prompt_task(args.prompt or args.prompt_ids)
    if args.task not in TASKS:
        raise UsageError(f"unknown task {args.task!r}: choose one of {', '.join(TASKS)} (or --prompt TEXT)")
    if (args.srt is not None or args.vtt is not None) and TASKS[args.task].output != "srwt":
        raise UsageError("--srt/--vtt need --task srwt (the only task with timestamps)")
    return TASKS[args.task]


def prompt_ids_for(args, task: Task, tokenizer: Tokenizer | None) -> list[int]:
    if not args.prompt_ids:
        return tokenizer.encode(task.prompt)
    try:
        return parse_prompt_ids(args.prompt_ids)
    except ValueError as err:
        raise UsageError(f"--prompt-ids: {err}") from None


def report(item: Item, decoded: Decoded, task: Task, tokenizer, args) -> tuple[Result | None, dict]:
    """The parsed result (None without a tokenizer) and the JSON record of one file."""
    result = decoded.parse(task, tokenizer)
    record = {"file": item.path, **({"key": item.key} if item.key != item.path else {}),
              **decoded.record(task, result, with_ids=args.ids)}
    return result, record


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.list_tasks:
        for task in TASKS.values():
            print(f"{task.name:22} {task.tag:38} {task.prompt}")
        return 0
    if args.web:
        from osum_min.web import DemoUnavailable, serve
        try:
            return serve(args.weights, host=args.host, port=args.port, device=args.device,
                         dtype=DTYPES[args.dtype] if args.dtype else None, examples=WEB_EXAMPLES,
                         batch_size=args.batch_size)
        except DemoUnavailable as err:
            print(f"infer.py: error: {err}", file=sys.stderr)
            return 2
    try:
        task = resolve_task(args)
        items = collect_inputs(args.inputs)
        if not items:
            raise UsageError("no audio files given (pass files, directories or a list)")
        if args.stream and len(items) > 1:
            raise UsageError("--stream decodes one file at a time: give one file")
        args.batch_size = 1 if args.stream else args.batch_size  # long audio: stream the windows one after another
        rank, world_size, _ = ranks.world()
        if world_size > 1 and args.stream:
            raise UsageError("--stream prints one file as it decodes: run it in one process, not torchrun")
        args.device = ranks.start(args.device)
        model, tokenizer = load(args)
        prompt_ids = prompt_ids_for(args, task, tokenizer)
        decoding = decoding_config(args, model.config.eod_id)
        if problem := model.config.prompt_length_problem(len(prompt_ids), decoding.max_new_tokens):
            raise UsageError(problem)
    except (UsageError, DataError) as err:
        print(f"infer.py: error: {err}", file=sys.stderr)
        return 2

    on_token = None
    if args.stream:
        stream = tokenizer.stream_decoder() if tokenizer and not args.ids else None
        on_token = lambda row, token: print(  # noqa: E731
            stream.push(token) if stream else f"{token} ", end="", flush=True)
    scorer = Scorer(task) if tokenizer and any(item.reference is not None for item in items) else None
    failures, pending, next_to_print = 0, {}, 0
    share = ranks.balanced_share([item.seconds for item in items], rank, world_size)
    progress = Progress(len(share), "files" if world_size == 1 else f"files, rank {rank} of {world_size}") \
        if len(share) > 3 and not args.stream and rank == 0 else None
    outcomes = ((share[i], outcome) for i, outcome in decode_files(model, [items[j] for j in share], prompt_ids,
                                                                    decoding, args.batch_size, on_token))
    if world_size > 1:  # every rank decodes its share; rank 0 reports them all, as one process would
        mine = []
        for pair in outcomes:
            mine.append(pair)
            if progress:
                progress.update()
        if progress:
            progress.close()
        outcomes, progress = ranks.gather_outcomes(mine), None
        if rank != 0:
            ranks.finish()
            return 0
    for index, outcome in outcomes:
        if progress:
            progress.update()
        if isinstance(outcome, AudioError):
            failures += 1
            if scorer:
                scorer.skipped += 1
            print(f"infer.py: skipped {outcome}", file=sys.stderr)
            pending[index] = json.dumps({"file": items[index].path, "error": str(outcome)}) if args.json else None
        else:
            result, record = report(items[index], outcome, task, tokenizer, args)
            if scorer and items[index].reference is not None:
                scorer.add(items[index].reference, result)
            if result and result.words is not None:
                for wanted, suffix in ((args.srt, ".srt"), (args.vtt, ".vtt")):
                    if wanted is not None:
                        out = Path(wanted or Path(items[index].path).parent) / (Path(items[index].path).stem + suffix)
                        out.write_text(subtitles(result.words, vtt=suffix == ".vtt"), encoding="utf-8")
            text = " | ".join(" ".join(map(str, ids)) for ids in outcome.ids) if args.ids else result.to_text()
            line = json.dumps(record, ensure_ascii=False) if args.json else \
                text if len(items) == 1 else f"{items[index].key}\t{text}"
            pending[index] = None if args.score_only or args.stream else line
        while next_to_print in pending:
            line = pending.pop(next_to_print)
            if line is not None:
                print(line, flush=True)
            next_to_print += 1
    if progress:
        progress.close()
    if args.stream:
        print(stream.finish() if stream else "")
    if scorer:
        print(json.dumps({"summary": scorer.summary()}) if args.json else "\n".join(scorer.lines()))
    ranks.finish()
    return 2 if failures == len(items) else 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
