"""The one request path (osum_min/inference/pipeline.py) on fixture_a's weights:
every kind of audio gives the ids infer.py
gives, a mixed batch equals each request alone, a bad request is an answer with its error while the rest decode, and
streamed tokens come in time order. Plus the infer.py refusals and outputs that the request path made possible."""

import io
import json
from dataclasses import replace

import numpy as np
import pytest
import soundfile
import torch

import infer
from conftest import FIXTURE_A
from osum_min.audio import SAMPLE_RATE, load_audio
from osum_min.model.generate import DEFAULT_DECODING
from osum_min.model.osum import OSUM
from osum_min.inference.pipeline import (
    Pipeline,
    Request,
    RequestError,
    load_request_audio,
)
from osum_min.text.tasks import TASKS, free_prompt_task
from osum_min.text.tokenizer import Tokenizer
from test_infer import weights_with_tokenizer  # noqa: F401  (a pytest fixture)

AUDIO = FIXTURE_A / "audio.wav"
OTHER = FIXTURE_A / "audio_batch_item1.wav"
PROMPT = [17, 230, 511, 42, 901, 7, 333]
GREEDY = replace(
    DEFAULT_DECODING, num_beams=1, repetition_penalty=1.0, max_new_tokens=8
)


@pytest.fixture(scope="module")
def model(fixture_weights):
    return OSUM.from_pretrained(fixture_weights, device="cpu")


def ids_of(answer):
    assert answer.error is None, answer.error
    return answer.decoded.ids


def test_paths_bytes_and_samples_give_the_same_ids(model, expected):
    samples, rate = soundfile.read(AUDIO, dtype="int16")
    requests = [
        Request(AUDIO, prompt_ids=PROMPT, config=GREEDY),
        Request(AUDIO.read_bytes(), prompt_ids=PROMPT, config=GREEDY),
        # int16 PCM, scaled
        Request(samples, sample_rate=rate, prompt_ids=PROMPT, config=GREEDY),
        Request(
            load_audio(AUDIO), sample_rate=SAMPLE_RATE, prompt_ids=PROMPT, config=GREEDY
        ),
    ]
    answers = Pipeline(model, None, batch_size=4)(requests)
    assert [ids_of(a) for a in answers] == [
        [expected["generate_greedy_ids"].tolist()[:8]]
    ] * 4
    assert [a.name for a in answers] == [
        str(AUDIO),
        "<bytes>",
        "<samples>",
        "<samples>",
    ]


def test_a_mixed_batch_equals_each_request_alone(model):
    """Other prompts, other audio and another decoding config in one run: each answer is its request's alone."""
    beam = replace(GREEDY, num_beams=3, repetition_penalty=1.05)
    requests = [
        Request(AUDIO, prompt_ids=PROMPT, config=GREEDY),
        Request(OTHER, prompt_ids=PROMPT[:3], config=GREEDY),
        Request(OTHER, prompt_ids=PROMPT, config=beam),
        Request(AUDIO, prompt_ids=PROMPT[2:], config=beam),
    ]
    together = Pipeline(model, None, batch_size=8)(requests)
    alone = [Pipeline(model, None, batch_size=1)([request])[0] for request in requests]
    assert [ids_of(a) for a in together] == [ids_of(a) for a in alone]
    # four different answers: the comparison has teeth
    assert len({str(ids_of(a)) for a in together}) == 4


def test_sampling_requests_never_share_a_batch(model):
    sampled = replace(GREEDY, do_sample=True, top_k=20, temperature=1.5, seed=7)
    requests = [
        Request(AUDIO, prompt_ids=PROMPT, config=sampled),
        Request(OTHER, prompt_ids=PROMPT, config=sampled),
    ]
    together = Pipeline(model, None, batch_size=8)(requests)
    alone = [Pipeline(model, None, batch_size=8)([request])[0] for request in requests]
    assert [ids_of(a) for a in together] == [ids_of(a) for a in alone]


def test_a_bad_request_is_an_answer_with_its_error_and_the_rest_decode(model):
    requests = [
        Request(
            b"RIFF\x00\x00not audio",
            prompt_ids=PROMPT,
            config=GREEDY,
            name="upload.wav",
        ),
        Request(AUDIO, prompt_ids=PROMPT, config=GREEDY),
        Request(AUDIO, prompt_ids=[5, 10**6], config=GREEDY),
        Request(AUDIO, config=GREEDY),  # no tokenizer: prompt ids are needed
        Request(
            np.zeros(0, dtype=np.float32),
            sample_rate=SAMPLE_RATE,
            prompt_ids=PROMPT,
            config=GREEDY,
        ),
        # no rate
        Request(
            np.ones(SAMPLE_RATE, dtype=np.float32), prompt_ids=PROMPT, config=GREEDY
        ),
        Request(
            np.full(SAMPLE_RATE, np.nan, dtype=np.float32),
            sample_rate=SAMPLE_RATE,
            prompt_ids=PROMPT,
            config=GREEDY,
        ),
        Request(
            np.array(["a", "b"]),
            sample_rate=SAMPLE_RATE,
            prompt_ids=PROMPT,
            config=GREEDY,
        ),
    ]
    answers = Pipeline(model, None, batch_size=8)(requests)
    assert answers[1].error is None and answers[1].decoded.ids
    kinds = [a.error.kind if a.error else None for a in answers]
    assert kinds == [
        "audio",
        None,
        "prompt",
        "prompt",
        "audio",
        "audio",
        "audio",
        "audio",
    ]
    for answer in answers:
        if answer.error:
            message = str(answer.error)
            assert (
                message.startswith(answer.name + ": ")
                and "\n" not in message
                and answer.decoded is None
            )
    assert "upload.wav: not a readable audio file" in str(answers[0].error)
    assert "1000000" in str(answers[2].error) and "vocabulary" in str(answers[2].error)
    assert "sample rate" in str(answers[5].error) and "NaN" in str(answers[6].error)


def test_errors_pickle_with_their_kind():
    import pickle

    error = pickle.loads(pickle.dumps(RequestError("a.wav", "too long", "too_long")))
    assert (str(error), error.name, error.problem, error.kind) == (
        "a.wav: too long",
        "a.wav",
        "too long",
        "too_long",
    )


def test_audio_over_the_cap_is_refused_as_too_long(model):
    with pytest.raises(RequestError) as caught:
        load_request_audio(Request(AUDIO), max_seconds=1.0)
    assert caught.value.kind == "too_long" and "2.8 s of audio is over" in str(
        caught.value
    )
    [answer] = Pipeline(model, None, max_audio_seconds=1.0)(
        [Request(AUDIO, prompt_ids=PROMPT, config=GREEDY)]
    )
    assert answer.error.kind == "too_long"


def test_a_score_that_became_nan_is_that_requests_error_only(model):
    class PoisonsSecondRow:
        config = model.config

        def generate(self, mel, mel_lens, prompt_ids, return_scores=False, **settings):
            ids, scores = model.generate(
                mel, mel_lens, prompt_ids, return_scores=True, **settings
            )
            scores = [
                float("nan") if prompt[0] == 99 else score
                for prompt, score in zip(prompt_ids, scores)
            ]
            return ids, scores

    requests = [
        Request(AUDIO, prompt_ids=PROMPT, config=GREEDY),
        Request(OTHER, prompt_ids=[99] + PROMPT, config=GREEDY),
    ]
    good, bad = Pipeline(PoisonsSecondRow(), None)(requests)
    assert ids_of(good) == ids_of(Pipeline(model, None)([requests[0]])[0])
    assert (
        bad.error.kind == "decoding" and "NaN" in str(bad.error) and bad.decoded is None
    )


def test_streamed_tokens_come_in_time_order_when_windows_share_a_batch(model, tmp_path):
    """A 70 s clip is three windows decoded in one batch (longest first); its stream is still window 1, 2, 3."""
    speech = load_audio(AUDIO).numpy()
    long_audio = np.tile(
        np.concatenate([speech, np.zeros(SAMPLE_RATE // 2, np.float32)]), 22
    )[: 70 * SAMPLE_RATE]
    requests = [
        Request(long_audio, sample_rate=SAMPLE_RATE, prompt_ids=PROMPT, config=GREEDY),
        Request(AUDIO, prompt_ids=PROMPT, config=GREEDY),
    ]
    streamed = {0: [], 1: []}
    answers = Pipeline(model, None, batch_size=8)(
        requests, on_token=lambda index, token: streamed[index].append(token)
    )
    assert len(answers[0].decoded.windows) == 3
    for index, answer in enumerate(answers):
        # every token once, windows in time order
        assert streamed[index] == sum(answer.decoded.ids, [])


def test_parsed_results_and_json_with_a_tokenizer(weights_with_tokenizer):  # noqa: F811
    tokenizer = Tokenizer.from_pretrained(weights_with_tokenizer)
    model = OSUM.from_pretrained(weights_with_tokenizer, device="cpu")
    requests = [
        Request(AUDIO, task=TASKS["ser"], config=GREEDY),
        Request(AUDIO, task=free_prompt_task("hello"), config=GREEDY),
        Request(AUDIO, task=free_prompt_task("  "), config=GREEDY),
    ]
    ser, free, empty = Pipeline(model, tokenizer)(requests)
    assert ser.prompt_ids == tokenizer.encode(
        TASKS["ser"].prompt
    ) and free.prompt_ids == tokenizer.encode("hello")
    assert ser.result.raw == tokenizer.decode(ser.decoded.ids[0])
    record = ser.to_json(with_ids=True)
    assert (
        record["task"] == "ser"
        and record["raw"] == ser.result.raw
        and record["ids"] == ser.decoded.ids[0]
    )
    assert (
        empty.error.kind == "prompt"
        and "empty" in str(empty.error)
        and empty.to_json() == {"error": str(empty.error)}
    )


# ---------------------------------------------------------------- infer.py on the request path


def run(capsys, *argv):
    code = infer.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["--task", "asr", "--json", "--stream", "--beams", "1"],
            "--json and --stream: choose one",
        ),
        (["--task", "asr", "--score-only"], "--score-only needs references"),
        (["--prompt", "hi", "--srt"], "--srt/--vtt need --task srwt"),
        (["--prompt", ""], "--prompt is empty"),
        (["--prompt", "   "], "--prompt is empty"),
        (
            ["--prompt-ids", "99999,3", "--ids"],
            "--prompt-ids: prompt ids [99999] outside this model's vocabulary",
        ),
        (["--prompt-ids=-5,3", "--ids"], "--prompt-ids: prompt ids [-5] outside"),
        (
            ["--task", "srwt", "--srt", "/proc/osum-none"],
            "--srt /proc/osum-none: cannot write subtitles there",
        ),
    ],
)
def test_flags_that_cannot_do_what_they_say_are_refused_in_one_line(
    capsys,
    weights_with_tokenizer,
    tmp_path,  # noqa: F811
    argv,
    message,
):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    code, lines, err = run(capsys, AUDIO, "--weights", weights_with_tokenizer, *argv)
    errors = [
        line for line in err.splitlines() if not line.startswith("infer.py: warning:")
    ]
    # (this tokenizer's eod warning aside)
    assert code == 2 and lines == [] and len(errors) == 1
    assert (
        message.replace("{tmp}", str(tmp_path)) in errors[0] and "Traceback" not in err
    )


def test_a_read_only_subtitle_folder_is_refused_before_decoding(
    capsys,
    weights_with_tokenizer,
    tmp_path,  # noqa: F811
    monkeypatch,
):
    """os.access stands in for a read-only mount (root may write anywhere); nothing may be loaded or decoded."""
    folder = tmp_path / "ro"
    folder.mkdir()
    real_access = infer.os.access
    monkeypatch.setattr(
        infer.os,
        "access",
        lambda path, mode: (
            False if str(path) == str(folder) else real_access(path, mode)
        ),
    )
    monkeypatch.setattr(
        infer,
        "load",
        lambda args: pytest.fail("the model was loaded before the folder was checked"),
    )
    code, _, err = run(
        capsys,
        AUDIO,
        "--weights",
        weights_with_tokenizer,
        "--task",
        "srwt",
        "--srt",
        folder,
    )
    assert (
        code == 2
        and err.strip()
        == f"infer.py: error: --srt {folder}: the folder is not writable"
    )


def test_same_named_files_get_their_own_subtitles_and_a_failed_write_loses_one_file(
    capsys,
    weights_with_tokenizer,  # noqa: F811
    tmp_path,
    monkeypatch,
):
    for folder in ("x", "y"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "a.wav").write_bytes(AUDIO.read_bytes())
    out = tmp_path / "subs"
    out.mkdir()
    flags = [
        "--weights",
        weights_with_tokenizer,
        "--task",
        "srwt",
        "--beams",
        "1",
        "--max-new-tokens",
        "6",
    ]
    code, lines, err = run(
        capsys, tmp_path / "x/a.wav", tmp_path / "y/a.wav", *flags, "--srt", out
    )
    assert code == 0 and sorted(p.name for p in out.iterdir()) == ["x_a.srt", "y_a.srt"]

    real_write = infer.Path.write_text

    def full_disk_for_x(path, *args, **kwargs):
        if path.name == "x_a.srt":
            raise OSError(28, "No space left on device")
        return real_write(path, *args, **kwargs)

    monkeypatch.setattr(infer.Path, "write_text", full_disk_for_x)
    for path in out.iterdir():
        path.unlink()
    code, lines, err = run(
        capsys, tmp_path / "x/a.wav", tmp_path / "y/a.wav", *flags, "--srt", out
    )
    assert (
        code == 1 and [p.name for p in out.iterdir()] == ["y_a.srt"] and len(lines) == 2
    )
    assert (
        f"{out / 'x_a.srt'}: cannot write (No space left on device)" in err
        and "Traceback" not in err
    )


def test_files_of_one_stem_in_one_folder_get_their_own_subtitles_in_a_folder_made_for_them(
    capsys,
    weights_with_tokenizer,  # noqa: F811
    tmp_path,
):
    """hello.wav and hello.flac beside each other wrote one hello.srt; --srt DIR needed DIR to exist."""
    folder = tmp_path / "clips"
    folder.mkdir()
    samples, rate = soundfile.read(AUDIO)
    soundfile.write(folder / "hello.wav", samples, rate)
    soundfile.write(folder / "hello.flac", samples[: len(samples) // 2], rate)
    flags = ["--weights", weights_with_tokenizer, "--task", "srwt", "--beams", "1"]
    out = tmp_path / "new" / "subs"
    code, _, err = run(
        capsys, folder, *flags, "--max-new-tokens", "6", "--srt", out, "--vtt"
    )
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["hello.flac.srt", "hello.wav.srt"]
    assert sorted(p.name for p in folder.glob("*.vtt")) == [
        "hello.flac.vtt",
        "hello.wav.vtt",
    ]


def test_tabs_and_line_breaks_in_keys_stay_inside_one_output_line(
    capsys, fixture_weights, tmp_path
):
    listing = tmp_path / "list.jsonl"
    keys = ["a\tb", "c\nd"]
    listing.write_text(
        "".join(json.dumps({"key": key, "wav": str(AUDIO)}) + "\n" for key in keys)
    )
    code, lines, _ = run(
        capsys,
        listing,
        "--weights",
        fixture_weights,
        "--prompt-ids",
        ",".join(map(str, PROMPT)),
        "--ids",
        "--beams",
        "1",
        "--max-new-tokens",
        "4",
    )
    assert code == 0 and len(lines) == 2
    assert [line.split("\t")[0] for line in lines] == ["a\\tb", "c\\nd"]
    assert all(len(line.split("\t")) == 2 for line in lines)


def test_score_only_with_a_model_without_tokenizer_is_refused(
    capsys, fixture_weights, tmp_path
):
    listing = tmp_path / "list.jsonl"
    listing.write_text(
        json.dumps({"key": "k", "wav": str(AUDIO), "txt": "hello"}) + "\n"
    )
    code, lines, err = run(
        capsys,
        listing,
        "--weights",
        fixture_weights,
        "--prompt-ids",
        "1,2",
        "--ids",
        "--score-only",
    )
    assert code == 2 and "has no tokenizer" in err and lines == []


def test_bytes_in_memory_name_the_request_not_a_buffer(model):
    buffer = io.BytesIO()
    soundfile.write(buffer, np.zeros(100, np.float32), SAMPLE_RATE, format="WAV")
    [answer] = Pipeline(model, None)(
        [Request(buffer.getvalue(), prompt_ids=PROMPT, config=GREEDY, name="clip.wav")]
    )
    assert str(answer.error).startswith("clip.wav: too short")
    assert torch.is_tensor(load_request_audio(Request(AUDIO.read_bytes())))


@pytest.mark.parametrize("protocol", ["osum", "qwen2-audio"])
# noqa: F811
def test_score_only_scores_by_the_chosen_protocol(
    capsys, weights_with_tokenizer, tmp_path, protocol
):
    """infer.py's summary is the Scorer's for that protocol over the same transcripts (what eval.py score prints)."""
    if protocol == "qwen2-audio":
        pytest.importorskip(
            "zhconv", reason="the qwen2-audio protocol needs the [eval] extra"
        )
    from osum_min.eval.scoring import Scorer
    from osum_min.text.tasks import parse

    references = ["hello, world", "the cat sat on the mat."]
    listing = tmp_path / "test.jsonl"
    listing.write_text(
        "".join(
            json.dumps({"key": f"u{i}", "wav": str(a), "txt": t}) + "\n"
            for i, (a, t) in enumerate(zip([AUDIO, OTHER], references))
        )
    )
    flags = [
        "--weights",
        weights_with_tokenizer,
        "--beams",
        "1",
        "--max-new-tokens",
        "6",
        "--json",
    ]
    code, lines, _ = run(
        capsys, listing, *flags, "--protocol", protocol, "--language", "en"
    )
    summary = json.loads(lines[-1])["summary"]
    code, lines, _ = run(capsys, listing, *flags)
    scorer = Scorer(TASKS["asr"], protocol, "en")
    for reference, line in zip(references, lines):
        scorer.add(reference, parse(TASKS["asr"], json.loads(line)["raw"]))
    assert summary == scorer.summary() and summary["protocol"] == protocol


def test_logprobs_score_the_answer_as_decoding_did(model):
    """Teacher-forced after decoding: greedy decoding's own summed log-probability is the sum of
    the tokens' (the eos included), each token is its step's best, and the alternatives come best
    first. Beam search's tokens are scored the same way, one entry per token."""
    greedy, beams = Pipeline(model, None)(
        [
            Request(AUDIO, prompt_ids=PROMPT, config=GREEDY, logprobs=3),
            Request(AUDIO, prompt_ids=PROMPT, config=DEFAULT_DECODING, logprobs=0),
        ]
    )
    [ids], [scored] = greedy.decoded.ids, greedy.decoded.logprobs
    assert len(scored) == len(ids) > 1
    total = sum(logprob for logprob, _ in scored)
    assert total == pytest.approx(greedy.decoded.scores[0], abs=1e-4)
    for token, (logprob, alternatives) in zip(ids, scored):
        assert [i for i, _ in alternatives][0] == token
        assert alternatives[0][1] == pytest.approx(logprob, abs=1e-6)
        values = [value for _, value in alternatives]
        assert len(values) == 3 and values == sorted(values, reverse=True)
    [beam_ids], [beam_scored] = beams.decoded.ids, beams.decoded.logprobs
    assert len(beam_scored) == len(beam_ids)
    assert all(lp <= 0 and alternatives == [] for lp, alternatives in beam_scored)


@pytest.mark.parametrize("count", [-1, 21, 2.0, True, "3"])
def test_a_logprobs_count_out_of_range_is_refused_where_the_request_is_built(count):
    with pytest.raises(ValueError, match="logprobs is .* from 0 to 20"):
        Request(AUDIO, logprobs=count)
