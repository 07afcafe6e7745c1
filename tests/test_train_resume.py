"""train.py under interruption and bad input: checkpoints load without running code, a stop at any point resumes
exactly, a crash leaves one log record per step, a truncated checkpoint falls back, bad transcripts are skipped."""

import json
import os
import signal

import pytest
import torch

import train
from osum_min.training import checkpoints
from osum_min.training.steps import TrainingError
from test_train import corpus, log_records, run_args  # noqa: F401 (corpus is a fixture)

STEPS = [
    "--preset",
    "tiny",
    "--max-steps",
    "6",
    "--save-every",
    "3",
    "--keep-last",
    "0",
]


def losses(out) -> list[tuple[int, float]]:
    return [
        (record["step"], record["loss"])
        for record in log_records(out)
        if "loss" in record
    ]


@pytest.fixture(scope="module")
def straight(corpus, tmp_path_factory):  # noqa: F811
    """The uninterrupted run that interrupted ones must equal (without evaluation: it must not change training)."""
    out = tmp_path_factory.mktemp("straight")
    assert train.main(run_args(corpus, out, *STEPS)) == 0
    return losses(out)


class Malicious:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_crafted_checkpoint_is_refused_and_runs_nothing(corpus, tmp_path):  # noqa: F811
    out, marker = tmp_path / "run", tmp_path / "ran"
    out.mkdir()
    torch.save({"model": {}, "step": Malicious(marker)}, out / "step_00000004.pt")
    with pytest.raises(TrainingError) as error:
        train.main(run_args(corpus, out, *STEPS, "--resume"))
    assert not marker.exists()
    message = str(error.value)
    assert (
        "\n" not in message
        and "step_00000004.pt" in message
        and "refused" in message
        and "system" in message
    )


@pytest.mark.parametrize("point", ["logging", "save", "evaluation"])
# noqa: F811
def test_a_stop_at_any_point_resumes_exactly(
    corpus, tmp_path, monkeypatch, straight, point
):
    """Ctrl-C while a step logs, saves or evaluates (2 dev clips at steps 4 and 6): the run stops at a step boundary
    with a checkpoint that holds the data position and RNG states of its weights; --resume then gives the
    uninterrupted run's losses."""
    target, name = {
        "logging": (train, "append_jsonl"),
        "save": (checkpoints, "save_checkpoint"),
        "evaluation": (train, "evaluate"),
    }[point]
    original, calls = getattr(target, name), []

    def interrupted(*args, **kwargs):
        result = original(*args, **kwargs)
        calls.append(1)
        if len(calls) == (2 if point == "logging" else 1):
            os.kill(os.getpid(), signal.SIGINT)
        return result

    monkeypatch.setattr(target, name, interrupted)
    out = tmp_path / "run"
    arguments = run_args(corpus, out, *STEPS)
    if point == "evaluation":
        dev = tmp_path / "dev.jsonl"
        dev.write_text(
            "".join(
                json.dumps(
                    {**json.loads(line), "wav": str(corpus / f"clip{index}.wav")}
                )
                + "\n"
                for index, line in enumerate(
                    (corpus / "train.jsonl").read_text().splitlines()[:2]
                )
            )
        )
        arguments += [
            "--dev-data",
            str(dev),
            "--eval-every",
            "4",
            "--eval-batches",
            "1",
        ]
    assert train.main(arguments) == 130
    assert len(losses(out)) == {"logging": 2, "save": 3, "evaluation": 4}[point]
    monkeypatch.undo()
    assert train.main(arguments + ["--resume"]) == 0
    assert losses(out) == straight
    if point == "evaluation":
        assert [record["step"] for record in log_records(out) if "eval" in record] == [
            4,
            6,
        ]


# noqa: F811
def test_a_crash_logs_each_step_once_and_passes_over_a_truncated_checkpoint(
    corpus, tmp_path, capsys
):
    """kill -9 after step 6 was logged but before its checkpoint, with step 4's checkpoint cut short and the log's
    last line half written: --resume warns, continues from step 2, and the log lists each step once."""
    out, steps = tmp_path / "run", [*STEPS, "--save-every", "2"]
    assert train.main(run_args(corpus, out, *steps)) == 0
    uninterrupted = losses(out)
    (out / "step_00000006.pt").unlink()
    fourth = out / "step_00000004.pt"
    fourth.write_bytes(fourth.read_bytes()[: fourth.stat().st_size // 2])
    with open(out / "train_log.jsonl", "a") as f:
        f.write('{"step": 7, "lo')
    capsys.readouterr()
    assert train.main(run_args(corpus, out, *steps, "--resume")) == 0
    printed = capsys.readouterr().out
    assert (
        "warning" in printed
        and "step_00000004.pt" in printed
        and "step_00000002.pt at step 2" in printed
    )
    assert losses(out) == uninterrupted and [step for step, _ in losses(out)] == list(
        range(1, 7)
    )


def test_bad_transcripts_are_skipped_counted_and_named(corpus, tmp_path, caplog):  # noqa: F811
    """null, non-string, empty and 1 MB transcripts: each skipped with its reason in the log, none aborts the run."""
    rows = [
        json.loads(line) for line in (corpus / "train.jsonl").read_text().splitlines()
    ]
    bad = [
        {"txt": None},
        {"txt": 123},
        {"txt": "  "},
        {"txt": "x" * 2**20},
        {"task": 5},
    ]
    rows += [
        {**rows[0], "key": f"bad{index}", **fields} for index, fields in enumerate(bad)
    ]
    for row in rows:
        row["wav"] = str(corpus / row["wav"])
    (tmp_path / "list.jsonl").write_text(
        "".join(json.dumps(row) + "\n" for row in rows)
    )
    arguments = run_args(
        corpus, tmp_path / "run", "--preset", "tiny", "--max-steps", "1"
    )
    arguments[arguments.index("--train-data") + 1] = str(tmp_path / "list.jsonl")
    assert train.main(arguments) == 0
    assert log_records(tmp_path / "run")[-1]["skipped_samples"] == len(bad)
    reasons = {
        record.getMessage().split(": ", 1)[1]
        for record in caplog.records
        if "skipping sample bad" in record.getMessage()
    }
    assert len(reasons) == len(bad) and any("null" in reason for reason in reasons)
    assert any("empty transcript" in reason for reason in reasons)
    assert any("1048576 characters" in reason for reason in reasons)


def test_resuming_with_other_trainable_parts_is_refused_in_one_line(corpus, tmp_path):  # noqa: F811
    """The checkpoint holds only what trained; resuming a run that trains other parts would load them silently."""
    out = tmp_path / "run"
    assert (
        train.main(
            run_args(
                corpus,
                out,
                "--preset",
                "tiny",
                "--max-steps",
                "1",
                "--fire-module",
                "link",
            )
        )
        == 0
    )
    with pytest.raises(TrainingError) as error:
        train.main(
            run_args(
                corpus,
                out,
                "--preset",
                "tiny",
                "--max-steps",
                "2",
                "--fire-module",
                "llm",
                "--resume",
            )
        )
    message = str(error.value)
    assert (
        "\n" not in message and "step_00000001.pt" in message and "trained" in message
    )
    assert "adaptor." in message and ".lora_A" in message and "--fire-module" in message


@pytest.mark.parametrize(
    "changed, said",
    [
        (["--preset", "small"], "--preset tiny (now small)"),
        (["--lr", "0.5"], "--lr"),
        (["--seed", "7"], "--seed"),
        (["--no-augment"], "--no-augment False (now True)"),
        (["--sort-buffer", "16"], "--sort-buffer 500 (now 16)"),
    ],
)
# noqa: F811
def test_resuming_with_another_config_is_refused_in_one_line(
    corpus, tmp_path, changed, said
):
    """--resume with another --preset trained the checkpoint's model without a word; any flag that changes the
    model, its data or its learning is refused likewise, before anything is built; the run's length is not."""
    out = tmp_path / "run"
    assert (
        train.main(run_args(corpus, out, "--preset", "tiny", "--max-steps", "1")) == 0
    )
    flags = ["--preset", "tiny", "--max-steps", "2", "--resume"]
    if changed[0] == "--preset":
        flags = flags[2:]
    with pytest.raises(TrainingError) as error:
        train.main(run_args(corpus, out, *flags, *changed))
    message = str(error.value)
    assert (
        "\n" not in message
        and "step_00000001.pt: saved by another run" in message
        and said in message
    )
    prompts = corpus / "list-prompts.json"
    prompts.write_text(json.dumps([["<TEST>", "name the tone"]]))
    with pytest.raises(
        ValueError,
        match=r"list-prompts.json: a prompts file is a JSON object .* not list$",
    ):
        train.main(
            run_args(
                corpus,
                tmp_path / "other",
                "--preset",
                "tiny",
                "--prompts",
                str(prompts),
            )
        )
    assert (
        train.main(
            run_args(corpus, out, "--preset", "tiny", "--max-steps", "2", "--resume")
        )
        == 0
    )
