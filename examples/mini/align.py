"""osum-mini's first stage: the adaptor learns to spell in the LLM's token embeddings (CTC), before train.py.

A fresh adaptor's outputs sit 35x above the token embeddings' scale and mean nothing to the LLM. Trained
through the LLM from there (the first recipe run, docs/mini.md), they grew into one constant vector the
LLM ignored. Here the adaptor trains alone with CTC, each speech embedding scored against the LLM's own
(frozen) token embeddings by cosine: frames that hear " the" point where " the" points, frames that
hear a rarer " pencil" where " p", "e", "n", ... point, in turn (`Spelling`). Beside it, a linear
head on their mean learns the speaker's gender, so the voice is not lost.
The frozen encoder runs once per clip (its output is cached, fp16) and no LLM runs, so a step costs a
few percent of a train.py step. The outputs are then scaled to the token embeddings' mean norm, and the
model is written as train.py's --init.

    python examples/mini/align.py RUN/init DATA/train_asr.jsonl DATA/dev_asr.jsonl RUN/aligned"""

import argparse
import hashlib
import json
import math
import pickle
import random
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from osum_min.data.dataset import DataConfig, SpeechDataset  # noqa: E402
from osum_min.eval.scoring import edit_operations  # noqa: E402
from osum_min.model.osum import OSUM  # noqa: E402
from osum_min.progress import Progress, status  # noqa: E402
from osum_min.text.tokenizer import Tokenizer  # noqa: E402

TASK = "<TRANSCRIBE>"  # the plain transcripts: CTC's targets
LETTERS = "abcdefghijklmnopqrstuvwxyz'"
NO_ITEMS = (
    f"no {TASK} items with a transcript (make_corpus.py's *_asr.jsonl lists have them)"
)


class Spelling:
    """A transcript as CTC's targets: a common word as its own token (" the"), any other word letter
    by letter: its first letter with its space (" p", one token in Qwen2's vocabulary), then its
    other letters ("e", "n", ...). Against whole-word tokens alone (run 3) the adaptor learned a
    grammar's 225 words and no others; at 15,000 words, each heard a few times, CTC stalled
    (run 4): a word's embedding says what it means, not how it sounds. Letters are few and every
    word trains them, but the LLM joins them into words slowly (docs/mini.md); a word heard often
    enough is learned whole, and the LLM copies it."""

    def __init__(self, tokenizer, words=()):
        self.tokenizer = tokenizer
        # each letter alone and after a space -> its token ids, encoded once
        self.pieces = {
            piece: tokenizer.encode(piece)
            for letter in LETTERS
            for piece in (letter, " " + letter)
        }
        self.letters = sorted({i for ids in self.pieces.values() for i in ids})
        self.words = {word: tokenizer.encode(" " + word) for word in words}
        # CTC's columns 1.. (0 is the blank)
        whole = {i for ids in self.words.values() for i in ids}
        self.ids = sorted(whole | set(self.letters))
        self.column = {token: i + 1 for i, token in enumerate(self.ids)}

    @staticmethod
    def clean(text: str) -> list[str]:
        """Lowercased words of letters and apostrophes."""
        return re.sub(f"[^{LETTERS} ]", " ", text.lower()).split()

    def __call__(self, label: list[int]) -> list[int]:
        """A transcript's token ids -> its words' or letters' token ids."""
        spelled = []
        for word in self.clean(self.tokenizer.decode(label)):
            if word in self.words:
                spelled += self.words[word]
                continue
            spelled += self.pieces[" " + word[0]]
            for letter in word[1:]:
                spelled += self.pieces[letter]
        return spelled


def common_words(tokenizer, labels, min_count: int) -> list[str]:
    """The words heard at least `min_count` times in these transcripts that are one token with
    their space (" the"): enough to learn whole, and one embedding the LLM already reads."""
    counts = Counter()
    for label in labels:
        counts.update(Spelling.clean(tokenizer.decode(label)))
    return [
        word
        for word, count in counts.most_common()
        if count >= min_count and len(tokenizer.encode(" " + word)) == 1
    ]


class CTCHead(torch.nn.Module):
    """Cosine between each speech embedding and [a learned blank; the frozen token embeddings], sharpened
    by a learned temperature, as log-probabilities for CTC."""

    def __init__(self, embeddings: torch.Tensor):
        super().__init__()
        self.embeddings = embeddings  # (V, H), frozen: the LLM's
        self.blank = torch.nn.Parameter(torch.randn(embeddings.shape[1]))
        self.log_temperature = torch.nn.Parameter(torch.tensor(math.log(10.0)))

    def forward(self, speech: torch.Tensor, ids: list[int]) -> torch.Tensor:
        table = torch.cat([self.blank[None], self.embeddings[ids]])  # (1 + V', H)
        cosine = F.normalize(speech, dim=-1) @ F.normalize(table, dim=-1).T
        logits = cosine * self.log_temperature.exp()  # (B, S, 1 + V')
        return logits.log_softmax(-1)


class WordsGenderHead(torch.nn.Module):
    """--gender-head words: cosine between a clip's mean speech embedding and the LLM's own embeddings
    of the label's gender words ("male", "female"), sharpened: the voice is put where the LLM reads
    words (docs/mini.md, run 3b: the LLM reads it, and CTC pays)."""

    def __init__(self, words: torch.Tensor):
        super().__init__()
        self.words = words  # (2, H), frozen: male, female
        self.log_temperature = torch.nn.Parameter(torch.tensor(math.log(10.0)))

    def forward(self, mean: torch.Tensor) -> torch.Tensor:
        cosine = F.normalize(mean, dim=-1) @ F.normalize(self.words, dim=-1).T
        return cosine * self.log_temperature.exp()  # (B, 2)


def build_gender_head(model, tokenizer, kind: str) -> torch.nn.Module:
    """male/female logits (B, 2) from a mean speech embedding (B, H)."""
    if kind == "linear":
        return torch.nn.Linear(model.config.adaptor.llm_dim, 2)
    embed = model.llm.embed_tokens.weight.detach()
    words = [embed[tokenizer.encode(word)].mean(0) for word in ("male", "female")]
    return WordsGenderHead(torch.stack(words))


@dataclass
class Clip:
    """A plain-transcript clip as the adaptor sees it: the frozen encoder has run once."""

    features: torch.Tensor  # (T, 512) float16, Whisper base at 50 Hz
    label: list[int]  # token ids, no eod: the transcript's, then CTC's targets
    female: bool | None  # None: the list does not say


def genders(path: Path) -> dict[str, bool | None]:
    """key -> whether the clip's voice is female, from make_corpus.py's list (None where a
    list of other recordings does not say)."""
    lines = [json.loads(line) for line in path.read_text().splitlines() if line]
    said = {line["key"]: line.get("gender") for line in lines}
    return {key: None if g is None else g == "female" for key, g in said.items()}


@torch.no_grad()
def encode(model, path: Path, tokenizer, data, eod_id) -> list[Clip]:
    """Every plain-transcript clip of a list through the frozen encoder, once: it is
    more than half of a step's time, and its output never changes."""
    female = genders(path)
    dataset = SpeechDataset(path, tokenizer, data, train=False, eod_id=eod_id)
    clips = []
    dtype = next(model.encoder.parameters()).dtype
    with Progress(len(female), f"encoding {path.name}", unit="clip") as bar:
        for batch in dataset:
            keep = [
                row
                for row, (task, label) in enumerate(
                    zip(batch["tasks"], batch["labels"])
                )
                if task == TASK and len(label) > 1 and label[-1] == eod_id
            ]
            bar.update(len(batch["keys"]))
            if not keep:
                continue
            mel = batch["mel"][keep].to(model.device, dtype)
            x, lengths = model.encoder(mel, batch["mel_lens"][keep], False)
            for i, row in enumerate(keep):
                features = x[i, : lengths[i]].half()
                label = batch["labels"][row][:-1]
                clips.append(Clip(features, label, female[batch["keys"][row]]))
    if not clips:
        raise SystemExit(f"{path}: {NO_ITEMS}")
    return clips


def encoded(model, args, tokenizer, data) -> tuple[list[Clip], list[Clip]]:
    """The train and dev clips, encoded: read from --cache when it was written from these
    very lists (their bytes' hash), else encoded and written there."""
    lists = (args.train_data, args.dev_data)
    digest = hashlib.sha256(b"".join(path.read_bytes() for path in lists)).hexdigest()
    if args.cache and args.cache.exists():
        try:
            cached = torch.load(args.cache, weights_only=True)
            found = cached["lists_sha256"]
        except (pickle.UnpicklingError, EOFError, KeyError, TypeError):
            found = "unreadable"
        if found == digest:
            status(f"read the encoded clips from {args.cache}")
            return tuple([Clip(*clip) for clip in split] for split in cached["clips"])
        status(f"{args.cache} is not these lists' clips ({found[:12]}): encoding again")
    eod_id = model.config.eod_id
    splits = tuple(encode(model, path, tokenizer, data, eod_id) for path in lists)
    if args.cache:
        clips = [[(c.features, c.label, c.female) for c in split] for split in splits]
        torch.save({"lists_sha256": digest, "clips": clips}, args.cache)
    return splits


def collate(clips: list[Clip], dropout: float = 0.0):
    """Clips -> encoder features (B, T, 512) zero-padded, float32, and lengths (B,)."""
    lengths = torch.tensor([len(clip.features) for clip in clips])
    x = pad_sequence([clip.features for clip in clips], batch_first=True).float()
    return F.dropout(x, dropout, training=dropout > 0), lengths


def adapted(model, clips: list[Clip]):
    """(chunk, speech embeddings (B, S, H), lengths (B,)) for the clips, 32 at a time."""
    for start in range(0, len(clips), 32):
        chunk = clips[start : start + 32]
        yield chunk, *model.adaptor(*collate(chunk))


def gender_logits(head, speech, lengths) -> torch.Tensor:
    """Speech embeddings (B, S, H) -> male/female logits (B, 2) from their mean over time:
    CTC alone would let the adaptor drop the voice, which the gender task needs."""
    mask = torch.arange(speech.shape[1])[None, :] < lengths[:, None]  # (B, S)
    mean = (speech * mask[..., None]).sum(1) / lengths[:, None]
    return head(mean)


def losses(model, heads, spelling, clips, dropout):
    ctc_head, gender_head = heads
    with torch.autocast("cpu", torch.bfloat16):
        speech, lengths = model.adaptor(*collate(clips, dropout))
    speech = speech.float()
    targets = [[spelling.column[token] for token in clip.label] for clip in clips]
    log_probs = ctc_head(speech, spelling.ids).transpose(0, 1)  # (S, B, 1 + V')
    ctc = F.ctc_loss(
        log_probs,
        torch.tensor([t for target in targets for t in target]),
        lengths,
        torch.tensor([len(target) for target in targets]),
        zero_infinity=True,
    )
    female = torch.tensor([clip.female for clip in clips], dtype=torch.long)
    gender = F.cross_entropy(gender_logits(gender_head, speech, lengths), female)
    return ctc, gender


def greedy(log_probs: torch.Tensor, length: int, ids: list[int]) -> list[int]:
    """Best column per frame, repeats merged, blanks dropped -> token ids."""
    best = log_probs[:length].argmax(-1).tolist()
    kept = [c for i, c in enumerate(best) if c and (i == 0 or c != best[i - 1])]
    return [ids[c - 1] for c in kept]


def heard_by_kind(spelling, ref: list[str], ops: list[int]) -> list[tuple[str, bool]]:
    """Each reference word's kind, "whole" (its own CTC target) or "spelled", and whether the
    edit path `ops` (`edit_operations`) keeps it (not substituted, not deleted)."""
    # 0 correct, 1 substituted, 2 deleted: a reference word each; 3 inserted: none
    kept = [op == 0 for op in ops if op != 3]
    kinds = ["whole" if word in spelling.words else "spelled" for word in ref]
    return list(zip(kinds, kept))


@torch.no_grad()
def score(model, heads, spelling, clips, name: str = "dev") -> dict:
    """Greedy CTC decoding's WER and the gender head's accuracy on the `name` clips: what the
    adaptor alone hears. Each reference word is also counted right or wrong by its kind, whole
    or spelled, on the edit path: which of the two targets holds the errors."""
    ctc_head, gender_head = heads
    errors = words = right = gendered = 0
    heard, counted = Counter(), Counter()
    for chunk, speech, lengths in adapted(model, clips):
        log_probs = ctc_head(speech, spelling.ids)  # (B, S, 1 + V')
        said = gender_logits(gender_head, speech, lengths).argmax(-1)
        for i, clip in enumerate(chunk):
            ref = spelling.tokenizer.decode(clip.label).split()
            said_ids = greedy(log_probs[i], int(lengths[i]), spelling.ids)
            hyp = spelling.tokenizer.decode(said_ids).split()
            ops = edit_operations(ref, hyp)  # one path: its counts are edit_distance's
            errors += sum(op != 0 for op in ops)
            words += len(ref)
            if clip.female is not None:
                gendered += 1
                right += int(said[i]) == int(clip.female)
            for kind, right_word in heard_by_kind(spelling, ref, ops):
                counted[kind] += 1
                heard[kind] += right_word
    figures = {f"{name}_ctc_greedy_wer": round(100.0 * errors / words, 2)}
    if gendered:
        figures[f"{name}_gender_accuracy"] = round(100.0 * right / gendered, 2)
    for kind in ("whole", "spelled"):
        if counted[kind]:
            share = 100.0 * heard[kind] / counted[kind]
            figures[f"{name}_{kind}_word_accuracy"] = round(share, 2)
    return figures


def scored_elsewhere(model, heads, spelling, paths, data) -> dict:
    """`score` on each further list, named by its file's stem; encoded here, not cached."""
    figures, eod_id = {}, model.config.eod_id
    for path in paths:
        clips = encode(model, path, spelling.tokenizer, data, eod_id)
        clips = [replace(clip, label=spelling(clip.label)) for clip in clips]
        figures |= score(model, heads, spelling, clips, name=path.stem)
    return figures


@torch.no_grad()
def match_text_scale(model, ids, clips) -> float:
    """Set the adaptor's output_scale so speech rows have the mean norm of CTC's columns' token
    embeddings (ids), the scale the LLM reads; CTC's cosine left it free. A constant, not the
    projection's weights: AdamW moves a weight by about lr a step, whatever its size."""
    norms = []
    for _, speech, lengths in adapted(model, clips):
        for row, length in zip(speech, lengths):
            norms.append(row[:length].norm(dim=-1).mean())
    text = model.llm.embed_tokens.weight[ids].norm(dim=-1).mean()
    scale = float(text / torch.stack(norms).mean()) * model.adaptor.config.output_scale
    config = replace(model.config.adaptor, output_scale=scale)
    model.config.adaptor = model.adaptor.config = config
    return scale


def batches(clips: list[Clip], size: int, seed: int):
    """Endless batches of `size` clips: each pass shuffles the clips, sorts every run of
    8 batches by length (less padding) and shuffles the batches."""
    rng = random.Random(seed)
    size = min(size, len(clips))
    while True:
        order = rng.sample(clips, len(clips))
        for start in range(0, len(order) - size + 1, 8 * size):
            run = sorted(order[start : start + 8 * size], key=lambda c: len(c.features))
            chunks = [run[i : i + size] for i in range(0, len(run) - size + 1, size)]
            yield from rng.sample(chunks, len(chunks))


def train(model, heads, spelling, clips, args) -> list[dict]:
    """AdamW on the adaptor and the heads: linear warmup over a tenth of the steps, cosine
    to zero; each step a random batch of the cached clips."""
    params = [*model.adaptor.parameters(), *heads.parameters()]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    warmup = max(1, args.steps // 10)

    def lr_factor(step):
        if step < warmup:
            return (step + 1) / warmup
        done = (step - warmup) / max(1, args.steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * done))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    log, recent = [], []
    drawn = batches(clips, args.batch_size, args.seed)
    with Progress(args.steps, "aligning the adaptor", unit="step") as bar:
        for step, batch in zip(range(1, args.steps + 1), drawn):
            ctc, gender = losses(model, heads, spelling, batch, args.dropout)
            optimizer.zero_grad()
            (ctc + args.gender_weight * gender).backward()
            torch.nn.utils.clip_grad_norm_(params, 5.0)
            optimizer.step()
            schedule.step()
            recent = [*recent[-19:], (ctc.item(), gender.item())]
            mean_ctc = sum(c for c, _ in recent) / len(recent)
            mean_gender = sum(g for _, g in recent) / len(recent)
            bar.desc = (
                f"aligning the adaptor (ctc {mean_ctc:.3f}, gender {mean_gender:.3f})"
            )
            bar.update(1)
            if step == 1 or step % 20 == 0 or step == args.steps:
                log.append(
                    {"step": step, "ctc_loss": mean_ctc, "gender_loss": mean_gender}
                )
    return log


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("init", type=Path, help="from convert.py --mini --no-delta")
    parser.add_argument("train_data", type=Path)
    parser.add_argument("dev_data", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=32, help="clips per step")
    parser.add_argument(
        "--dropout", type=float, default=0.1, help="on the cached encoder features"
    )
    parser.add_argument("--gender-weight", type=float, default=0.5)
    parser.add_argument(
        "--gender-head",
        choices=["linear", "words"],
        default="linear",
        help="words: tied to the LLM's embeddings of male/female",
    )
    parser.add_argument(
        "--batch-frames", type=int, default=6000, help="per encoder batch, once"
    )
    parser.add_argument(
        "--word-min-count",
        type=int,
        default=20,
        help="a word heard this often in training is CTC's target whole (0: letters only)",
    )
    parser.add_argument(
        "--score-data",
        type=Path,
        action="append",
        default=[],
        help="another list to score at the end, as dev is (real recordings: does it carry over?)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--cache", type=Path, help="keep the encoded clips here, for the next run"
    )
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    if args.word_min_count < 0:
        parser.error("--word-min-count must be 0 (letters only) or more")

    torch.manual_seed(args.seed)
    status(f"loading {args.init}")
    model = OSUM.from_pretrained(args.init, device="cpu", for_training=True)
    model.requires_grad_(False)
    model.adaptor.requires_grad_(True).train()
    tokenizer = Tokenizer.from_pretrained(args.init)
    heads = torch.nn.ModuleList(
        [
            CTCHead(model.llm.embed_tokens.weight.detach()),
            build_gender_head(model, tokenizer, args.gender_head),
        ]
    )
    data = DataConfig(max_frames_in_batch=args.batch_frames, sort_buffer=32)
    start = time.monotonic()
    splits = encoded(model, args, tokenizer, data)
    labels = [clip.label for clip in splits[0]]
    words = (
        common_words(tokenizer, labels, args.word_min_count)
        if args.word_min_count
        else []
    )
    spelling = Spelling(tokenizer, words)
    train_clips, dev_clips = (
        [replace(clip, label=spelling(clip.label)) for clip in clips]
        for clips in splits
    )
    ready = time.monotonic()
    log = train(model, heads, spelling, train_clips, args)
    model.adaptor.eval()
    figures = {
        "steps": args.steps,
        "clips": len(train_clips),
        "encoding_seconds": round(ready - start, 1),
        "training_seconds": round(time.monotonic() - ready, 1),
        "final_ctc_loss": round(log[-1]["ctc_loss"], 4),
        "final_gender_loss": round(log[-1]["gender_loss"], 4),
        **score(model, heads, spelling, dev_clips),
        **scored_elsewhere(model, heads, spelling, args.score_data, data),
        "output_scale": round(match_text_scale(model, spelling.ids, dev_clips), 5),
        "letters": len(spelling.letters),
        "whole_words": len(spelling.words),
    }
    model.save_pretrained(args.out)
    tokenizer.save(args.out)
    (args.out / "align_log.jsonl").write_text(
        "".join(json.dumps(line) + "\n" for line in [*log, figures])
    )
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ValueError, OSError) as err:  # a missing directory, an unreadable list
        sys.exit(f"align.py: error: {err}")
