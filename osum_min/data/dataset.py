"""Training batches for `OSUM.loss` from OSUM's data formats (osum_min/data/formats.py; docs/original.md §7, §8, §10).

A mix weights its lists: a weight n repeats its list n times per epoch; a weight below 1 takes a random share
int(len * w) of it, drawn anew each epoch (the original draws it once); a weight like 2.5 gives 2 copies plus a
random half (the original truncates it to 2).

An epoch runs the original's pipeline: the weighted list, shuffled the same way on every rank -> this rank's and
this DataLoader worker's share -> read -> prompt drawn from the task's paraphrases, label normalised, tokenised
and ended with the eod id -> filters -> log-mel -> SpecAugment, spec_sub -> shuffle buffer -> sort buffer ->
dynamic batches -> padded, longest first. Every random draw comes from an RNG seeded by (seed, epoch, rank,
worker), so the batches are a pure function of those and of num_workers: a resumed run that skips the batches it
had consumed sees exactly what an uninterrupted run would.

Bad samples (unreadable audio, no text, unknown task, a broken tar) are skipped with one warning line and counted
in `dataset.skipped`; samples the filters drop are counted in `dataset.filtered`. DataLoader workers hold their own
copies of the dataset, so every batch also carries its worker's counts for the current pass (`"skipped"`,
`"filtered"`, `"worker"`): the pass's totals are the sums, over workers, of each worker's latest batch.
"""

import logging
import random
import signal
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..audio import HOP, log_mel, pad_features
from .augment import spec_augment, spec_substitute
from .formats import (
    DataError,
    DataSource,
    is_mix,
    make_shards,
    read_data_list,
    read_data_mix,
    read_samples,
)
from ..config_check import ConfigError
from ..text.tasks import TASKS_BY_TAG
from ..text.tokenizer import map_style_tags, process_text

__all__ = [
    "BatchStream",
    "DataConfig",
    "DataError",
    "DataSource",
    "SpeechDataset",
    "make_loader",
    "make_shards",
    "read_data_list",
    "read_data_mix",
]

log = logging.getLogger(__name__)
# for samples without a task when filter_no_extra_info is off
DEFAULT_TASK = "<TRANSCRIBE>"
MAX_CHARS_PER_TOKEN = 32  # a longer transcript cannot fit token_max_length: skipped before it is tokenised


@dataclass
class DataConfig:
    """The original's training `dataset_conf` (docs/original.md §10). Lengths are in 10 ms feature frames."""

    # dynamic batching: batch size x longest item, after padding
    max_frames_in_batch: int = 3900
    batch_size: int | None = None  # set: static batches of this many samples instead
    max_length: int = 2900
    min_length: int = 0
    token_max_length: int = 200  # label tokens, eod included
    token_min_length: int = 1
    max_seq_len: int = 1000  # prompt + frames / 8 + label
    # `<CAPTION>` samples longer than this are cropped at random, not dropped
    caption_max_frames: int = 2900
    # drop samples without a task (off: they get `<TRANSCRIBE>`)
    filter_no_extra_info: bool = True
    shuffle: bool = True  # list and buffer shuffling, in train mode
    shuffle_buffer: int = 1500
    sort: bool = True
    sort_buffer: int = 500
    spec_aug: bool = True  # in train mode
    num_time_masks: int = 2
    max_time_mask: int = 50
    num_freq_masks: int = 2
    max_freq_mask: int = 10
    spec_sub: bool = True  # in train mode
    num_spec_subs: int = 3
    max_spec_sub: int = 30
    # task tag -> paraphrases, replacing the task table's (text/tasks.py) for those tags
    prompts: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self):
        """A new task goes in the task table (EXTRA_TASKS), where every front end finds it too."""
        for tag, paraphrases in self.prompts.items():
            if tag not in TASKS_BY_TAG:
                raise ConfigError(
                    "prompts",
                    tag,
                    "no task's tag (add the task to EXTRA_TASKS in text/tasks.py)",
                )
            if not paraphrases or not all(
                isinstance(t, str) and t.strip() for t in paraphrases
            ):
                raise ConfigError(
                    f"prompts[{tag!r}]", paraphrases, "not a list of prompt texts"
                )


def _buffered(samples, size: int, reorder):
    """Collect `size` samples, reorder them in place, pass them on; the last partial buffer too."""
    buffer = []
    for sample in samples:
        buffer.append(sample)
        if len(buffer) >= size:
            reorder(buffer)
            yield from buffer
            buffer = []
    reorder(buffer)
    yield from buffer


class SpeechDataset(IterableDataset):
    """Batches of `{"keys", "tasks", "mel" (B, T, 80), "mel_lens" (B,) int32, "prompt_ids", "labels", "skipped",
    "filtered", "worker"}`, ready for `model.loss(mel, mel_lens, prompt_ids, labels)`.

    `tokenizer` is anything with `.encode(text) -> list[int]`; `eod_id` defaults to `tokenizer.eod_id`.
    `train=False` turns off augmentation and shuffling (filters, sorting and batching stay as configured).
    """

    def __init__(
        self,
        data_list_or_mix,
        tokenizer,
        config: DataConfig | None = None,
        train: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        eod_id: int | None = None,
    ):
        self.sources = self._sources(data_list_or_mix)
        if not any(source.items and source.weight for source in self.sources):
            raise DataError(f"{data_list_or_mix}: no samples to read")
        self.tokenizer, self.config, self.train = (
            tokenizer,
            config or DataConfig(),
            train,
        )
        self.eod_id = (
            eod_id if eod_id is not None else getattr(tokenizer, "eod_id", None)
        )
        if self.eod_id is None:
            raise DataError(
                "no eod id: pass eod_id= (the model's config.eod_id) or a tokenizer with .eod_id"
            )
        if not 0 <= rank < world_size:
            raise DataError(f"rank {rank} is outside world_size {world_size}")
        self.seed, self.rank, self.world_size, self.epoch = seed, rank, world_size, 0
        # tag -> paraphrases
        self.prompts = {
            **{tag: task.paraphrases for tag, task in TASKS_BY_TAG.items()},
            **self.config.prompts,
        }
        self.prompt_ids: dict[str, list[int]] = {}
        self.skipped = self.filtered = 0
        self._pass_skipped = self._pass_filtered = 0

    @staticmethod
    def _sources(data) -> list[DataSource]:
        if isinstance(data, (str, Path)):
            path = Path(data)
            return (
                read_data_mix(path)
                if is_mix(path)
                else [DataSource(path.name, read_data_list(path))]
            )
        data = list(data)
        return (
            data
            if all(isinstance(item, DataSource) for item in data)
            else [DataSource("items", data)]
        )

    def set_epoch(self, epoch: int) -> None:
        """A new shuffle (and mix share) per epoch; workers see it because make_loader's workers are not persistent."""
        self.epoch = epoch

    def _shuffling(self) -> bool:
        return self.train and self.config.shuffle

    def _epoch_items(self, worker: int, num_workers: int) -> list[dict]:
        # the same on every rank and worker
        rng = random.Random(f"osum-data-list/{self.seed}/{self.epoch}")
        items = []
        for source in self.sources:
            copies, share = divmod(source.weight, 1)
            items += source.items * int(copies)
            if share:
                items += rng.sample(source.items, int(len(source.items) * share))
        if self._shuffling():
            rng.shuffle(items)
        return items[self.rank :: self.world_size][worker::num_workers]

    def _skip(self, key: str, source: str, problem) -> None:
        self.skipped += 1
        self._pass_skipped += 1
        log.warning("skipping sample %s (%s): %s", key, source, problem)

    def _encode_prompt(self, prompt: str) -> list[int]:
        if prompt not in self.prompt_ids:
            self.prompt_ids[prompt] = list(self.tokenizer.encode(prompt))
        return self.prompt_ids[prompt]

    def _prepare(self, sample: dict, rng: random.Random) -> dict | None:
        """Prompt, label, filters, features and augmentation for one sample; None when a filter drops it."""
        config = self.config
        text, task = sample.get("txt"), sample.get("task") or ""
        if text is None:
            raise DataError("no transcript (txt missing or null)")
        if not isinstance(text, str) or not isinstance(task, str):
            raise DataError(
                f"txt and task must be strings, not {type(text).__name__} and {type(task).__name__}"
            )
        # the tag may be written without spaces
        task = task.strip().replace("><", "> <")
        if (not task and config.filter_no_extra_info) or "<none>" in text.lower():
            return None
        if not text.strip():
            raise DataError(
                "empty transcript (txt): the label would be the end token alone"
            )
        if len(text) > MAX_CHARS_PER_TOKEN * config.token_max_length:
            raise DataError(
                f"transcript of {len(text)} characters, far beyond token_max_length "
                f"{config.token_max_length}"
            )
        task = task or DEFAULT_TASK
        if task not in self.prompts:
            raise DataError(
                f"unknown task {task!r} (no task's tag: add the task to EXTRA_TASKS in text/tasks.py)"
            )
        prompt_ids = self._encode_prompt(rng.choice(self.prompts[task]))
        text = map_style_tags(text) if "<STYLE>" in task else text
        labels = list(self.tokenizer.encode(process_text(text))) + [self.eod_id]
        audio = sample["audio"]
        crop = config.caption_max_frames * HOP
        if "<CAPTION>" in task and len(audio) > crop:
            start = rng.randint(0, len(audio) - crop)
            audio = audio[start : start + crop]
        frames = len(audio) // HOP
        if not (
            config.min_length <= frames <= config.max_length
            and config.token_min_length <= len(labels) <= config.token_max_length
            and len(prompt_ids) + frames / 8 + len(labels) <= config.max_seq_len
        ):
            return None
        feats = log_mel(audio)  # (frames, 80)
        if self.train and config.spec_aug:
            feats = spec_augment(
                feats,
                rng,
                config.num_time_masks,
                config.max_time_mask,
                config.num_freq_masks,
                config.max_freq_mask,
            )
        if self.train and config.spec_sub:
            feats = spec_substitute(
                feats, rng, config.num_spec_subs, config.max_spec_sub
            )
        return {
            "key": sample["key"],
            "task": task,
            "feats": feats,
            "prompt_ids": prompt_ids,
            "labels": labels,
        }

    def _prepared(self, samples, rng: random.Random):
        for sample in samples:
            try:
                prepared = self._prepare(sample, rng)
            except (ValueError, OSError) as err:
                self._skip(sample["key"], sample["source"], err)
                continue
            if prepared is None:
                self.filtered += 1
                self._pass_filtered += 1
            else:
                yield prepared

    def _batches(self, samples):
        """Static batches of `batch_size`, or dynamic ones: close a batch before its padded frames would pass
        max_frames_in_batch (wenet's DynamicBatchWindow); a single overlong sample still forms a batch."""
        batch, longest = [], 0
        for sample in samples:
            frames = len(sample["feats"])
            if self.config.batch_size:
                full = len(batch) >= self.config.batch_size
            else:
                full = (
                    max(longest, frames) * (len(batch) + 1)
                    > self.config.max_frames_in_batch
                )
            if batch and full:
                yield batch
                batch, longest = [], 0
            batch.append(sample)
            longest = max(longest, frames)
        if batch:
            yield batch

    def _collate(self, samples: list[dict], worker: int) -> dict:
        # longest first, as the original pads
        samples = sorted(samples, key=lambda sample: -len(sample["feats"]))
        # (B, T, 80), (B,) int32
        mel, mel_lens = pad_features([sample["feats"] for sample in samples])
        return {
            "keys": [s["key"] for s in samples],
            "tasks": [s["task"] for s in samples],
            "mel": mel,
            "mel_lens": mel_lens,
            "prompt_ids": [s["prompt_ids"] for s in samples],
            "labels": [s["labels"] for s in samples],
            "skipped": self._pass_skipped,
            "filtered": self._pass_filtered,
            "worker": worker,
        }

    def __iter__(self):
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info else (0, 1)
        rng = random.Random(
            f"osum-data/{self.seed}/{self.epoch}/{self.rank}/{self.world_size}/{worker}"
        )
        self._pass_skipped = self._pass_filtered = 0
        samples = self._prepared(
            read_samples(self._epoch_items(worker, num_workers), self._skip), rng
        )
        if self._shuffling():
            samples = _buffered(samples, self.config.shuffle_buffer, rng.shuffle)
        if self.config.sort:
            samples = _buffered(
                samples,
                self.config.sort_buffer,
                lambda b: b.sort(key=lambda s: len(s["feats"])),
            )
        for batch in self._batches(samples):
            yield self._collate(batch, worker)


def make_loader(
    dataset: SpeechDataset, num_workers: int = 0, pin_memory: bool = False
) -> DataLoader:
    """The dataset batches itself (batch_size=None). Workers are started anew each epoch, so `set_epoch` reaches
    them; their batches arrive in turn, worker 0 first, which keeps the order a function of num_workers."""
    return DataLoader(
        dataset,
        batch_size=None,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=False,
        worker_init_fn=_ignore_interrupts if num_workers else None,
    )


def _ignore_interrupts(worker: int) -> None:
    """Ctrl-C reaches the workers too; the training process decides when to stop (train.py), so they carry on."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class BatchStream:
    """This rank's batches, epoch after epoch, from a saved position on: `position` is (epoch, batches consumed in
    it), which a checkpoint stores. The order is a pure function of (seed, epoch, rank, world, num_workers), so a
    resumed stream skips the batches consumed and continues exactly as an uninterrupted one."""

    def __init__(
        self,
        dataset: SpeechDataset,
        num_workers: int = 0,
        position: tuple[int, int] = (0, 0),
    ):
        self.dataset, self.num_workers = dataset, num_workers
        self.epoch, self.consumed = position
        self._batches = self._epochs()

    @property
    def position(self) -> tuple[int, int]:
        return self.epoch, self.consumed

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        return next(self._batches)

    def _epochs(self):
        while True:
            self.dataset.set_epoch(self.epoch)
            # a new DataLoader iterator draws a seed from torch's RNG:
            with torch.random.fork_rng(devices=[]):
                # keep it out of the training stream
                loader = iter(make_loader(self.dataset, self.num_workers))
            for _ in range(self.consumed):
                next(loader, None)
            produced = 0
            for batch in loader:
                produced += 1
                self.consumed += 1
                yield batch
            if produced == 0 and self.consumed == 0:
                raise DataError(
                    f"{', '.join(source.name for source in self.dataset.sources)}: no usable samples "
                    f"for rank {self.dataset.rank}"
                )
            self.epoch, self.consumed = self.epoch + 1, 0
