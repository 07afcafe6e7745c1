"""The one request path: audio and a task (or a prompt) in, parsed results out, for every front end.

infer.py, the web page, the server and eval.py all decode through `Pipeline.run`, so a rule about prompts, long
audio, batching or bad input holds everywhere at once. A request is audio (a path, an encoded file's bytes, or
samples with their rate), a task or a prompt, and a GenerationConfig. Requests are decoded longest first in batches
of windows (audio over 30 s is cut at quiet points, windows.py); requests that decode differently (another config,
or sampling, whose random draws depend on the batch) never share a batch, so every answer equals the one its request
gets alone. A request that cannot be served becomes an Answer with a one-line `RequestError`; the others go on.
Printing, JSON records, subtitles and HTTP belong to the front ends.
"""

import io
import os
import time
from dataclasses import dataclass, field, replace

import numpy as np
import soundfile
import torch

from ..audio import (
    HOP,
    SAMPLE_RATE,
    AudioError,
    AudioTooLong,
    header_seconds,
    load_audio,
    log_mel,
    pad_features,
)
from ..files import printable
from ..model.generate import DEFAULT_DECODING, GenerationConfig
from ..model.osum import OSUM
from ..text.tasks import TASKS, Result, Task
from ..text.tokenizer import Tokenizer
from .windows import Decoded, split_windows

ERROR_KINDS = ("audio", "too_long", "prompt", "decoding")


class RequestError(ValueError):
    """A request we cannot serve, in one line naming its audio and the problem. `kind` says whose fault it is, so
    a server can answer with the right status: "audio" (unreadable), "too_long" (over a duration cap), "prompt"
    (empty, ids outside the vocabulary, too long for the model) or "decoding" (the model's scores became NaN)."""

    def __init__(self, name: str, problem: str, kind: str = "audio"):
        assert kind in ERROR_KINDS, kind
        super().__init__(" ".join(f"{printable(name)}: {printable(problem)}".split()))
        self.name, self.problem, self.kind = name, problem, kind

    # pickles (torch.distributed, multiprocessing) with its three fields
    def __reduce__(
        self,
    ):
        return RequestError, (self.name, self.problem, self.kind)


MAX_TOP_LOGPROBS = 20  # OpenAI's bound on top_logprobs


@dataclass
class Request:
    # a path, an encoded file's bytes, or samples
    audio: str | os.PathLike | bytes | np.ndarray | torch.Tensor
    # required with samples: 1-D mono, or (channels, samples) averaged
    sample_rate: int | None = None
    task: Task = TASKS["asr"]  # TASKS[name], or tasks.free_prompt_task(text)
    # instead of the tokens of task.prompt (models without a tokenizer)
    prompt_ids: list[int] | None = None
    # eos: the model's eod or None
    config: GenerationConfig = field(default_factory=lambda: DEFAULT_DECODING)
    # how messages name the audio (default: the path, "<bytes>" or "<samples>")
    name: str | None = None
    # (start, end) seconds of the audio: one utterance of a long recording
    span: tuple[float, float] | None = None
    # each answer token's log-probability and this many likeliest alternatives (None: none)
    logprobs: int | None = None

    def __post_init__(self):
        count = self.logprobs
        if count is not None and (
            type(count) is not int or not 0 <= count <= MAX_TOP_LOGPROBS
        ):
            raise ValueError(
                f"logprobs is {count!r}: None, or how many alternatives "
                f"to list per token, from 0 to {MAX_TOP_LOGPROBS}"
            )

    @property
    def label(self) -> str:
        if self.name is not None:
            return self.name
        if isinstance(self.audio, (str, os.PathLike)):
            return os.fspath(self.audio)
        return (
            "<bytes>"
            if isinstance(self.audio, (bytes, bytearray, memoryview))
            else "<samples>"
        )


@dataclass
class Answer:
    name: str
    task: Task
    prompt_ids: list[int] = field(default_factory=list)
    decoded: Decoded | None = None  # windows, new ids per window, decode time
    # parsed and joined over the windows; None without a tokenizer
    result: Result | None = None
    # instead of decoded and result, when the request failed
    error: RequestError | None = None

    def to_json(self, with_ids: bool = False) -> dict:
        """The answer as one JSON object (infer.py --json, the web page): task, prompt, the parsed fields, audio and
        decoding seconds, the windows of long audio, optionally the ids; or the error."""
        if self.error is not None:
            return {"error": str(self.error)}
        decoded = self.decoded
        record = {
            "task": self.task.name,
            "prompt": self.task.prompt,
            **(self.result.to_json() if self.result else {}),
            "audio_s": round(decoded.audio_seconds, 3),
            "decode_s": round(decoded.decode_seconds, 3),
        }
        if len(decoded.windows) > 1:
            record["windows"] = [
                [round(s / SAMPLE_RATE, 3), round(e / SAMPLE_RATE, 3)]
                for s, e in decoded.windows
            ]
        if with_ids:
            record["ids"] = decoded.ids[0] if len(decoded.ids) == 1 else decoded.ids
        return record


def _encoded(request: Request):
    """What load_audio reads: a path, or a file in memory. Samples are written as a float WAV, so they pass the
    same checks as a file (empty, non-finite, implausible rate, too short) and the same resampler."""
    audio = request.audio
    if isinstance(audio, (str, os.PathLike)):
        return audio
    if isinstance(audio, (bytes, bytearray, memoryview)):
        return io.BytesIO(bytes(audio))
    if request.sample_rate is None:
        raise AudioError(request.label, "samples need their sample rate")
    samples = (
        audio.detach().cpu().numpy()
        if isinstance(audio, torch.Tensor)
        else np.asarray(audio)
    )
    if (
        samples.ndim not in (1, 2)
        or samples.size == 0
        or samples.dtype.kind not in "fiu"
    ):
        raise AudioError(
            request.label,
            f"samples must be a non-empty 1-D or (channels, samples) array of real "
            f"numbers, got {samples.dtype} of shape {samples.shape}",
        )
    # integer PCM, scaled as soundfile reads it (int16 / 32768)
    if samples.dtype.kind in "iu":
        info = np.iinfo(samples.dtype)
        samples = (samples.astype(np.float64) - (info.max + 1 + info.min) / 2) / (
            (info.max - info.min + 1) / 2
        )
    buffer = io.BytesIO()
    # (frames, channels)
    soundfile.write(
        buffer,
        np.atleast_2d(samples.astype(np.float32)).T,
        int(request.sample_rate),
        format="WAV",
        subtype="FLOAT",
    )
    buffer.seek(0)
    return buffer


def load_request_audio(
    request: Request, max_seconds: float | None = None
) -> torch.Tensor:
    """The request's audio as a (samples,) 16 kHz mono waveform; RequestError when it cannot be read or is longer
    than `max_seconds` (refused from the header before decoding where it says so)."""
    try:
        return load_audio(_encoded(request), span=request.span, max_seconds=max_seconds)
    except AudioTooLong as err:
        raise RequestError(request.label, err.problem, "too_long") from None
    except AudioError as err:
        raise RequestError(request.label, err.problem, "audio") from None
    except (
        ValueError,
        TypeError,
        OverflowError,
        RuntimeError,
        soundfile.LibsndfileError,
    ) as err:
        raise RequestError(
            request.label,
            f"not usable as audio ({' '.join(str(err).split())})",
            "audio",
        ) from None


def request_seconds(request: Request) -> float:
    """The audio's duration without decoding it (0 where unknown): the batches' length order."""
    audio = request.audio
    if request.span is not None:
        return request.span[1] - request.span[0]
    if isinstance(audio, (np.ndarray, torch.Tensor)):
        return audio.shape[-1] / request.sample_rate if request.sample_rate else 0.0
    if isinstance(audio, (bytes, bytearray, memoryview)):
        try:
            return soundfile.info(io.BytesIO(bytes(audio))).duration
        except Exception:  # noqa: BLE001  unreadable audio sorts anywhere; loading it names the problem
            return 0.0
    return header_seconds(audio)  # never opens a FIFO or a device


class _Stream:
    """Streamed tokens per waveform in time order, although its windows may share a batch: a window's tokens wait
    until every earlier window of the same waveform has finished."""

    def __init__(self, on_token):
        self.on_token, self.next_window, self.waiting, self.done = (
            on_token,
            {},
            {},
            set(),
        )

    def token(self, wave: int, window: int, token: int):
        if window == self.next_window.setdefault(wave, 0):
            self.on_token(wave, token)
        else:
            self.waiting.setdefault((wave, window), []).append(token)

    def window_done(self, wave: int, window: int):
        self.done.add((wave, window))
        while (wave, self.next_window.get(wave, 0)) in self.done:
            self.next_window[wave] = self.next_window.get(wave, 0) + 1
            for token in self.waiting.pop((wave, self.next_window[wave]), []):
                self.on_token(wave, token)


def decode_waveforms(
    model,
    waves: list[torch.Tensor],
    prompt_ids: list[list[int]],
    config: GenerationConfig,
    batch_size: int,
    on_token=None,
    on_batch=None,
    keep_going=None,
    logprobs: int | None = None,
) -> list[Decoded]:
    """Each (samples,) 16 kHz waveform cut into windows (at most the model's 30 s), with its prompt; all windows
    decoded `batch_size` at a time through `model.generate` (OSUM). Batches take windows longest first, so little
    is padding; one at a time they go in time order. `on_token(wave, token_id)` streams each waveform's tokens in
    order; `on_batch(done, total)` after each batch; `keep_going()` before each step (generate.DecodingStopped);
    `logprobs` (a count of alternatives) scores each window's answer (OSUM.token_logprobs)."""
    max_seconds = model.config.max_mel_frames * HOP / SAMPLE_RATE
    decoded = [Decoded(split_windows(wav, max_seconds)) for wav in waves]
    windows = []  # (waveform number, window number, features (T, 80))
    for wave, (item, wav) in enumerate(zip(decoded, waves)):
        item.ids, item.scores = [[] for _ in item.windows], [0.0 for _ in item.windows]
        item.logprobs = [[] for _ in item.windows] if logprobs is not None else []
        windows += [
            (wave, number, log_mel(wav[start:end]))
            for number, (start, end) in enumerate(item.windows)
        ]
    if batch_size > 1:
        windows.sort(key=lambda window: -len(window[2]))
    stream = _Stream(on_token) if on_token else None
    for first in range(0, len(windows), batch_size):
        chunk = windows[first : first + batch_size]
        # (B, T, 80), (B,)
        mel, mel_lens = pad_features([features for _, _, features in chunk])
        on_row = (
            (lambda row, token: stream.token(chunk[row][0], chunk[row][1], token))
            if stream
            else None
        )
        started = time.perf_counter()
        prompts = [prompt_ids[wave] for wave, _, _ in chunk]
        ids, scores = model.generate(
            mel,
            mel_lens,
            prompts,
            config=config,
            on_token=on_row,
            return_scores=True,
            keep_going=keep_going,
        )
        scored = (
            model.token_logprobs(mel, mel_lens, prompts, ids, logprobs)
            if logprobs is not None
            else [None] * len(chunk)
        )
        share = (time.perf_counter() - started) / len(chunk)
        for (wave, number, features), window_ids, score, window_logprobs in zip(
            chunk, ids, scores, scored
        ):
            if window_logprobs is not None:
                decoded[wave].logprobs[number] = window_logprobs
            decoded[wave].ids[number], decoded[wave].scores[number] = window_ids, score
            decoded[wave].speech_positions += model.config.speech_positions(
                len(features)
            )
            decoded[wave].decode_seconds += share
            if stream:
                stream.window_done(wave, number)
        if on_batch:
            on_batch(first + len(chunk), len(windows))
    return decoded


class Pipeline:
    """A loaded model and tokenizer serving lists of Requests; `batch_size` windows decode together."""

    def __init__(
        self,
        model: OSUM,
        tokenizer: Tokenizer | None,
        batch_size: int = 8,
        max_audio_seconds: float | None = None,
    ):
        self.model, self.tokenizer = model, tokenizer
        self.batch_size, self.max_audio_seconds = batch_size, max_audio_seconds

    def config(self, request: Request) -> GenerationConfig:
        """The request's decoding, ending at this model's eod (eos None: exactly max_new_tokens, for benchmarks)."""
        if request.config.eos_token_id is None:
            return request.config
        return replace(request.config, eos_token_id=self.model.config.eod_id)

    def prompt_ids(self, request: Request) -> list[int]:
        """The prompt's token ids, checked: given ids inside the vocabulary, a prompt with text, and room in the
        model for prompt, 30 s of speech and the answer."""
        vocab_size = self.model.config.llm.vocab_size
        if request.prompt_ids is not None:
            ids = list(request.prompt_ids)
            outside = [i for i in ids if not 0 <= i < vocab_size]
            if not ids or outside:
                raise RequestError(
                    request.label,
                    f"prompt ids {outside[:3] if ids else '(none)'} outside this "
                    f"model's vocabulary of {vocab_size} ids (0 to {vocab_size - 1})",
                    "prompt",
                )
        elif self.tokenizer is None:
            raise RequestError(
                request.label,
                "this model has no tokenizer: give the prompt as token ids",
                "prompt",
            )
        elif not request.task.prompt.strip():
            raise RequestError(
                request.label,
                "the prompt is empty: give a task or some prompt text",
                "prompt",
            )
        else:
            ids = self.tokenizer.encode(request.task.prompt)
        if problem := self.model.config.prompt_length_problem(
            len(ids), request.config.max_new_tokens
        ):
            raise RequestError(request.label, problem, "prompt")
        return ids

    def run(
        self, requests: list[Request], on_token=None, on_batch=None, keep_going=None
    ):
        """Yield (index, Answer) per request as each completes: longest first, `batch_size` requests loaded at a
        time and their windows decoded `batch_size` at a time. `on_token(index, token_id)` streams each request's
        tokens in order (greedy and sampling: beam search knows its tokens only at the end); `on_batch(done,
        total)` counts the windows of each group of requests; `keep_going()`, asked before every decoding step,
        stops the run (generate.DecodingStopped) when nobody waits for it."""
        groups = {}  # decoding key -> (config, logprobs, [(index, prompt ids)])
        for index, request in enumerate(requests):
            try:
                prompt_ids = self.prompt_ids(request)
            except RequestError as err:
                yield index, Answer(request.label, request.task, error=err)
                continue
            config = self.config(request)
            # sampled rows draw from one generator per batch
            key = (index,) if config.do_sample else (repr(config), request.logprobs)
            group = groups.setdefault(key, (config, request.logprobs, []))
            group[2].append((index, prompt_ids))
        for config, logprobs, members in groups.values():
            members.sort(key=lambda member: -request_seconds(requests[member[0]]))
            for first in range(0, len(members), self.batch_size):
                loaded = []  # (index, prompt ids, waveform)
                for index, prompt_ids in members[first : first + self.batch_size]:
                    try:
                        loaded.append(
                            (
                                index,
                                prompt_ids,
                                load_request_audio(
                                    requests[index], self.max_audio_seconds
                                ),
                            )
                        )
                    except RequestError as err:
                        yield (
                            index,
                            Answer(
                                requests[index].label,
                                requests[index].task,
                                prompt_ids,
                                error=err,
                            ),
                        )
                on_wave = (
                    (lambda wave, token: on_token(loaded[wave][0], token))
                    if on_token
                    else None
                )
                decoded = decode_waveforms(
                    self.model,
                    [wav for _, _, wav in loaded],
                    [ids for _, ids, _ in loaded],
                    config,
                    self.batch_size,
                    on_wave,
                    on_batch,
                    keep_going,
                    logprobs,
                )
                for (index, prompt_ids, _), item in zip(loaded, decoded):
                    yield index, self.answer(requests[index], prompt_ids, item)

    def answer(
        self, request: Request, prompt_ids: list[int], decoded: Decoded
    ) -> Answer:
        """A decoded request parsed for its task; an error where the model's scores became NaN."""
        if any(np.isnan(score) for score in decoded.scores):
            return Answer(
                request.label,
                request.task,
                prompt_ids,
                error=RequestError(
                    request.label,
                    "the model's scores became NaN while decoding: no output",
                    "decoding",
                ),
            )
        result = (
            decoded.parse(request.task, self.tokenizer)
            if self.tokenizer is not None
            else None
        )
        return Answer(request.label, request.task, prompt_ids, decoded, result)

    def __call__(self, requests: list[Request], on_token=None) -> list[Answer]:
        """Every Answer, in the order of the requests."""
        answers = dict(self.run(requests, on_token))
        return [answers[index] for index in range(len(requests))]
