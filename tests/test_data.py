"""The data path: OSUM's list formats, prompts and labels, filters, augmentation, batching and collation.

The fixture_a test runs the original's training batch through our data path and into `model.loss`: features
(atol 1e-4), lengths, prompt/label ids (exact) and the loss 7.3029351 (atol 1e-4).
"""

import io
import json
import random
import tarfile

import numpy as np
import soundfile
import torch

from osum_min.audio import load_audio, log_mel
from osum_min.data.augment import spec_augment, spec_substitute
from osum_min.data.dataset import (
    DataConfig,
    SpeechDataset,
    make_loader,
    make_shards,
    read_data_mix,
)
from osum_min.model.osum import OSUM
from osum_min.text.tasks import TASKS_BY_TAG

from conftest import FIXTURE_A

EOD = 1000
QUIET = DataConfig(spec_aug=False, spec_sub=False, shuffle=False)


class StubTokenizer:
    """fixture_a's stand-in tokenizer: fixed texts -> the fixture's ids."""

    ids = {
        "prompt a": [17, 230, 511, 42, 901, 7, 333],
        "prompt b": [88, 12, 640, 5, 77],
        "the quick brown fox.": [101, 202, 303, 404, 505, 606, 707, 808],
        "hello world.": [11, 22, 33, 44, 55],
    }

    def encode(self, text):
        return self.ids[text]


class CharTokenizer:
    def encode(self, text):
        return [ord(char) % EOD for char in text]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    return path


def fixture_rows():
    return [
        {
            "key": "item1",
            "wav": str(FIXTURE_A / "audio_batch_item1.wav"),
            "txt": "Hello World.",
            "task": "<TRANSCRIBE> <GENDER>",
        },
        {
            "key": "item0",
            "wav": str(FIXTURE_A / "audio.wav"),
            "txt": "The Quick Brown Fox.",
            "task": "<TRANSCRIBE>",
        },
    ]


def short_wavs(tmp_path, count, seconds=lambda index: 0.1):
    """Noise clips; `seconds(index)` sets each one's length."""
    rng = np.random.default_rng(0)
    paths = []
    for index in range(count):
        path = tmp_path / f"clip{index}.wav"
        soundfile.write(
            path,
            (rng.standard_normal(int(16000 * seconds(index))) * 3000).astype(np.int16),
            16000,
        )
        paths.append(str(path))
    return paths


def clip_rows(paths, prefix, task="<TRANSCRIBE>"):
    return [
        {"key": f"{prefix}{index}", "wav": path, "txt": f"word {index}", "task": task}
        for index, path in enumerate(paths)
    ]


def all_keys(dataset):
    return [key for batch in dataset for key in batch["keys"]]


# --- fixture_a: the original's training batch ---------------------------------------------------------------------


def test_fixture_batch_collates_and_gives_the_original_loss(
    tmp_path, expected, fixture_weights
):
    config = DataConfig(
        spec_aug=False,
        spec_sub=False,
        shuffle=False,
        prompts={"<TRANSCRIBE>": ("prompt a",), "<TRANSCRIBE> <GENDER>": ("prompt b",)},
    )
    dataset = SpeechDataset(
        write_jsonl(tmp_path / "data.list", fixture_rows()),
        StubTokenizer(),
        config,
        eod_id=EOD,
    )
    [batch] = list(dataset)
    assert batch["keys"] == ["item0", "item1"]  # longest first
    assert (
        batch["mel"].dtype == torch.float32 and batch["mel_lens"].dtype == torch.int32
    )
    assert (
        batch["mel_lens"].tolist()
        == expected["batch_feats_lengths"].tolist()
        == [276, 219]
    )
    assert torch.allclose(batch["mel"], expected["batch_feats"], atol=1e-4)
    assert batch["prompt_ids"] == [
        [i for i in row if i != -1] for row in expected["batch_prompt"].tolist()
    ]
    assert batch["labels"] == [
        [i for i in row if i != -100] for row in expected["batch_target"].tolist()
    ]
    model = OSUM.from_pretrained(fixture_weights, device="cpu", for_training=True)
    with torch.no_grad():
        loss = model.loss(
            batch["mel"], batch["mel_lens"], batch["prompt_ids"], batch["labels"]
        )
    assert abs(loss.item() - expected["batch_loss"].item()) < 1e-4  # 7.3029351


# --- formats ------------------------------------------------------------------------------------------------------


def test_raw_list_and_shards_give_identical_batches(tmp_path):
    rows = fixture_rows() + [
        {
            "key": "segment",
            "wav": str(FIXTURE_A / "audio.wav"),
            "txt": "a part",
            "task": "<TRANSCRIBE> <GENDER>",
            "start": 0.5,
            "end": 1.5,
            "gender": "male",
        }
    ]
    raw = write_jsonl(tmp_path / "raw.list", rows)
    shard_list = make_shards(raw, tmp_path / "shards", samples_per_shard=2)
    assert len(shard_list.read_text().split()) == 2
    with tarfile.open(shard_list.read_text().split()[1]) as tar:
        assert sorted(tar.getnames()) == [
            "segment.gender",
            "segment.task",
            "segment.txt",
            "segment.wav",
        ]
    # augmentation on
    config = DataConfig(
        shuffle=False,
        batch_size=2,
        prompts={"<TRANSCRIBE>": ("a",), "<TRANSCRIBE> <GENDER>": ("b",)},
    )
    mels = {}
    for train in (True, False):
        batches = [
            list(
                SpeechDataset(
                    path, CharTokenizer(), config, train=train, seed=5, eod_id=EOD
                )
            )
            for path in (raw, shard_list)
        ]
        assert len(batches[0]) == len(batches[1]) == 2
        for from_raw, from_shards in zip(*batches):
            assert torch.equal(from_raw["mel"], from_shards["mel"]) and torch.equal(
                from_raw["mel_lens"], from_shards["mel_lens"]
            )
            for field in ("keys", "tasks", "prompt_ids", "labels"):
                assert from_raw[field] == from_shards[field]
        mels[train] = batches[0][0]["mel"]
    assert not torch.equal(mels[True], mels[False])  # train mode augments


def test_segment_cut_by_start_and_end(tmp_path):
    row = {
        "key": "s",
        "wav": str(FIXTURE_A / "audio.wav"),
        "txt": "x",
        "task": "<TRANSCRIBE>",
        "start": 0.5,
        "end": 1.5,
    }
    [batch] = list(
        SpeechDataset(
            write_jsonl(tmp_path / "a.list", [row]), CharTokenizer(), QUIET, eod_id=EOD
        )
    )
    assert batch["mel_lens"].tolist() == [100]
    assert torch.equal(
        batch["mel"][0], log_mel(load_audio(FIXTURE_A / "audio.wav")[8000:24000])
    )


def test_mix_weights_set_the_share_of_each_list(tmp_path):
    paths = short_wavs(tmp_path, 20)
    write_jsonl(tmp_path / "a.list", clip_rows(paths, "a"))
    write_jsonl(tmp_path / "b.list", clip_rows(paths, "b"))
    (tmp_path / "mix.yaml").write_text(
        'set_a:\n  path: "a.list"\n  weight: 3  # three copies\nset_b:\n'
        "\tpath: b.list\n\tweight: 1\n"
    )
    (tmp_path / "mix.json").write_text(
        json.dumps(
            {
                "set_a": {"path": "a.list", "weight": 3},
                "set_b": {"path": "b.list", "weight": 0.5},
            }
        )
    )
    assert [
        (s.name, s.weight, len(s.items)) for s in read_data_mix(tmp_path / "mix.yaml")
    ] == [
        ("set_a", 3.0, 20),
        ("set_b", 1.0, 20),
    ]
    keys = all_keys(
        SpeechDataset(tmp_path / "mix.yaml", CharTokenizer(), DataConfig(), eod_id=EOD)
    )
    from_a = [key.startswith("a") for key in keys]
    assert sum(from_a) == 60 and len(keys) == 80  # exactly 3:1 over an epoch
    # and mixed through it: 0.75 expected in the first half
    assert 0.6 <= np.mean(from_a[:40]) <= 0.9
    keys = all_keys(
        SpeechDataset(tmp_path / "mix.json", CharTokenizer(), DataConfig(), eod_id=EOD)
    )
    assert (
        sum(key.startswith("a") for key in keys) == 60
        and sum(key.startswith("b") for key in keys) == 10
    )


# --- order, sharding, batching --------------------------------------------------------------------------------


def test_order_is_a_function_of_seed_and_epoch_and_ranks_partition_it(tmp_path):
    data = write_jsonl(tmp_path / "a.list", clip_rows(short_wavs(tmp_path, 20), "u"))
    config = DataConfig(batch_size=3)
    dataset = SpeechDataset(data, CharTokenizer(), config, seed=1, eod_id=EOD)
    first = list(dataset)
    again = list(dataset)
    assert [b["keys"] for b in first] == [b["keys"] for b in again]
    assert all(torch.equal(a["mel"], b["mel"]) for a, b in zip(first, again))
    dataset.set_epoch(1)
    assert [b["keys"] for b in dataset] != [b["keys"] for b in first]
    shares = [
        all_keys(
            SpeechDataset(
                data,
                CharTokenizer(),
                config,
                seed=1,
                rank=rank,
                world_size=3,
                eod_id=EOD,
            )
        )
        for rank in range(3)
    ]
    assert sorted(key for share in shares for key in share) == sorted(
        f"u{i}" for i in range(20)
    )
    assert [len(share) for share in shares] == [7, 7, 6]


def test_dynamic_batches_stay_under_the_frame_budget(tmp_path):
    # 5..40 frames
    paths = short_wavs(tmp_path, 24, seconds=lambda index: 0.05 + 0.05 * (index % 8))
    data = write_jsonl(tmp_path / "a.list", clip_rows(paths, "u"))
    batches = list(
        SpeechDataset(
            data, CharTokenizer(), DataConfig(max_frames_in_batch=100), eod_id=EOD
        )
    )
    assert sorted(all_keys(batches)) == sorted(f"u{i}" for i in range(24))
    for batch in batches:
        assert batch["mel"].shape[0] * batch["mel"].shape[1] <= 100
        assert batch["mel_lens"].tolist() == sorted(
            batch["mel_lens"].tolist(), reverse=True
        )
        assert batch["mel"].shape[1] == batch["mel_lens"][0]
    assert len(batches) < 24 / 2  # the budget packs several clips per batch


# --- per-sample processing ------------------------------------------------------------------------------------------


def test_prompt_label_and_filters(tmp_path):
    [path] = short_wavs(tmp_path, 1)
    rows = [
        {
            "key": "style",
            "wav": path,
            "txt": "Hello <朗读>",
            "task": "<TRANSCRIBE><STYLE>",
        },
        {"key": "no_task", "wav": path, "txt": "x"},
        {"key": "none", "wav": path, "txt": "x<None>", "task": "<TRANSCRIBE>"},
        {"key": "too_long", "wav": path, "txt": "y" * 300, "task": "<TRANSCRIBE>"},
    ]
    rows += clip_rows([path] * 30, "p")
    dataset = SpeechDataset(
        write_jsonl(tmp_path / "a.list", rows), CharTokenizer(), QUIET, eod_id=EOD
    )
    batches = list(dataset)
    samples = {
        key: (task, prompt, label)
        for b in batches
        for key, task, prompt, label in zip(
            b["keys"], b["tasks"], b["prompt_ids"], b["labels"]
        )
    }
    assert dataset.filtered == batches[-1]["filtered"] == 3 and dataset.skipped == 0
    assert set(samples) == {"style"} | {f"p{i}" for i in range(30)}
    task, prompt, label = samples["style"]
    assert task == "<TRANSCRIBE> <STYLE>"
    assert label == CharTokenizer().encode("hello<新闻科普>") + [EOD]
    assert prompt in [CharTokenizer().encode(p) for p in TASKS_BY_TAG[task].paraphrases]
    drawn = {tuple(samples[f"p{i}"][1]) for i in range(30)}
    assert (
        drawn
        <= {
            tuple(CharTokenizer().encode(p))
            for p in TASKS_BY_TAG["<TRANSCRIBE>"].paraphrases
        }
        and len(drawn) > 1
    )
    kept = SpeechDataset(
        write_jsonl(tmp_path / "b.list", rows[1:2]),
        CharTokenizer(),
        DataConfig(filter_no_extra_info=False),
        eod_id=EOD,
    )
    assert [b["tasks"] for b in kept] == [["<TRANSCRIBE>"]]


def test_corrupt_samples_are_skipped_and_counted(tmp_path):
    paths = short_wavs(tmp_path, 4)
    (tmp_path / "bad.wav").write_text("this is text, not audio\n")
    rows = clip_rows(paths, "u")
    rows.insert(
        2,
        {
            "key": "bad",
            "wav": str(tmp_path / "bad.wav"),
            "txt": "x",
            "task": "<TRANSCRIBE>",
        },
    )
    rows.insert(
        3, {"key": "odd_task", "wav": paths[0], "txt": "x", "task": "<NO SUCH TASK>"}
    )
    data = write_jsonl(tmp_path / "a.list", rows)
    dataset = SpeechDataset(data, CharTokenizer(), QUIET, eod_id=EOD)
    batches = list(dataset)
    assert sorted(all_keys(batches)) == ["u0", "u1", "u2", "u3"]
    assert dataset.skipped == batches[-1]["skipped"] == 2

    shard = tmp_path / "bad.tar"
    with tarfile.open(shard, "w") as tar:
        for key, audio in (
            ("g1", open(paths[0], "rb").read()),
            ("bad", b"RIFF garbage"),
            ("g2", open(paths[1], "rb").read()),
        ):
            for suffix, data_bytes in (
                ("wav", audio),
                ("txt", b"word"),
                ("task", b"<TRANSCRIBE>"),
            ):
                info = tarfile.TarInfo(f"{key}.{suffix}")
                info.size = len(data_bytes)
                tar.addfile(info, io.BytesIO(data_bytes))
    (tmp_path / "shards.list").write_text(f"{shard}\n{tmp_path / 'missing.tar'}\n")
    dataset = SpeechDataset(
        tmp_path / "shards.list", CharTokenizer(), QUIET, eod_id=EOD
    )
    # the bad member and the missing tar
    assert sorted(all_keys(dataset)) == ["g1", "g2"] and dataset.skipped == 2

    batches = list(
        make_loader(
            SpeechDataset(data, CharTokenizer(), DataConfig(batch_size=1), eod_id=EOD),
            num_workers=2,
        )
    )
    assert sorted(all_keys(batches)) == ["u0", "u1", "u2", "u3"]
    latest = {batch["worker"]: batch["skipped"] for batch in batches}
    assert set(latest) == {0, 1} and sum(latest.values()) == 2


# --- augmentation ---------------------------------------------------------------------------------------------------


def test_spec_augment_masks_the_stated_widths():
    ones = torch.ones(200, 80)
    time_widths, freq_widths = [], []
    for seed in range(300):
        out = spec_augment(
            ones, random.Random(seed), num_time_masks=1, num_freq_masks=1
        )
        # the draws: time start, time width, bin start, bin width
        replay = random.Random(seed)
        t0, tw, f0, fw = (
            replay.randint(0, 199),
            replay.randint(1, 50),
            replay.randint(0, 79),
            replay.randint(1, 10),
        )
        zero_rows, zero_cols = (out == 0).all(1), (out == 0).all(0)
        assert zero_rows.sum() == min(200, t0 + tw) - t0 and zero_rows[t0]
        assert zero_cols.sum() == min(80, f0 + fw) - f0 and zero_cols[f0]
        # nothing else touched
        assert ((out == 0) == (zero_rows[:, None] | zero_cols[None, :])).all()
        time_widths.append(tw)
        freq_widths.append(fw)
    assert (
        min(time_widths) == 1
        and max(time_widths) == 50
        and min(freq_widths) == 1
        and max(freq_widths) == 10
    )
    # the defaults: 2 time masks of <= 50 frames, 2 frequency masks of <= 10 bins
    for seed in range(50):
        out = spec_augment(ones, random.Random(seed))
        assert (
            1 <= (out == 0).all(1).sum() <= 100 and 1 <= (out == 0).all(0).sum() <= 20
        )


def test_spec_sub_copies_earlier_frames():
    feats = torch.arange(1000.0)[:, None].expand(1000, 80)  # row i holds i
    for seed in range(50):
        out = spec_substitute(feats, random.Random(seed))
        changed = (out != feats).any(1)
        assert changed.sum() <= 3 * 30
        # every row comes from the same or an earlier frame
        assert (out[:, 0] <= feats[:, 0]).all()
        assert (out == out[:, :1]).all()  # whole frames are copied
