"""Decoding for the Qwen2 decoder: greedy, sampling, beam search and beam-sample, with transformers' semantics.

The prompt arrives as embeddings (OSUM feeds speech), left-padded with a 0/1 mask. Each item is prefilled once,
alone, into the static KV cache, which its beams or samples then share (kv_cache.py). Then every decode step feeds
one token per row through one function of device tensors whose shapes are fixed for the whole call (`decode_step`),
so it can be captured as a CUDA graph and compiled (`fast_decoding`); the host waits for the device once per step in
beam search, and every few steps in greedy decoding and sampling. Position ids are the count of real tokens before a
slot, so left padding never shifts them, and a row in a batch is the same math as alone. Only rounding differs
(kernels block sums by the number of rows), which can, rarely, tip a near-tie in beam search the other way. Outputs
hold the new tokens only, ending with the eos when one was hit.
"""

import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config_check import ConfigError, check_config, check_seed
from .kv_cache import KVCache, bucket
from .qwen2 import Qwen2
from .sequence import position_ids
from ..text.tokenizer import EOD_ID  # Qwen2's <|endoftext|>, OSUM's hard-coded eos


# Below it dividing float32 logits can overflow: inf - inf = NaN probabilities.
LOWEST_TEMPERATURE = 1e-4


@dataclass
class GenerationConfig:
    """Decoding settings, checked where they are built (infer.py's flags, the server's
    fields, the web page, the Python API), each problem in one line naming the field."""

    max_new_tokens: int = 400
    num_beams: int = 1
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    length_penalty: float = 1.0
    num_return_sequences: int = 1
    eos_token_id: int | list[int] | None = EOD_ID
    seed: int | None = None  # None: draw from torch's global generator

    def __post_init__(self):
        check_config(
            self,
            # top_k 0 is off; a length penalty below 0 favours short beams
            minimum={
                "top_k": 0,
                "temperature": LOWEST_TEMPERATURE,
                "length_penalty": -math.inf,
            },
            maximum={"top_p": 1.0},
            why={
                "temperature": "sampling divides the scores by it: a smaller one "
                "overflows them into NaN; for greedy decoding leave do_sample off"
            },
        )
        check_seed(self)
        eos = self.eos_token_id
        if not isinstance(eos, (int, list, tuple, type(None))) or not all(
            type(i) is int and i >= 0 for i in self.eos_ids()
        ):
            raise ConfigError(
                "eos_token_id", eos, "not a token id, a list of them or None"
            )
        most = self.num_beams if self.num_beams > 1 else None if self.do_sample else 1
        if most is not None and self.num_return_sequences > most:
            raise ConfigError(
                "num_return_sequences",
                self.num_return_sequences,
                f"above {most}: more sequences need sampling or as many beams",
            )

    def eos_ids(self) -> list[int]:
        eos = self.eos_token_id
        return [] if eos is None else [eos] if isinstance(eos, int) else list(eos)


class DecodingStopped(RuntimeError):
    """`keep_going()` said no: nobody waits for this batch any more (a server's clients went away)."""


# greedy and sampling off the CPU: steps between checks that every row has ended
EOS_CHECK_EVERY = 8

# The original's hard-coded decoding: beam search with sampling (transformers' "beam-sample"), not deterministic.
ORIGINAL_DECODING = GenerationConfig(
    max_new_tokens=400,
    num_beams=4,
    do_sample=True,
    top_k=5,
    top_p=0.9,
    repetition_penalty=1.05,
    eos_token_id=EOD_ID,
)
# The same beam width and penalty without sampling, so a transcript is reproducible.
DEFAULT_DECODING = GenerationConfig(
    max_new_tokens=400, num_beams=4, repetition_penalty=1.05, eos_token_id=EOD_ID
)


def apply_repetition_penalty(scores, generated, penalty: float):
    """transformers' rule on every token already generated in the row: negative scores *= p, positive /= p."""
    if penalty == 1.0 or generated.shape[1] == 0:
        return scores
    seen = scores.gather(1, generated)
    return scores.scatter(
        1, generated, torch.where(seen < 0, seen * penalty, seen / penalty)
    )


def warp_scores(scores, cfg: GenerationConfig, min_tokens_to_keep: int):
    """Temperature, then top-k, then top-p (nucleus), in transformers' order; removed tokens get -inf."""
    if cfg.temperature != 1.0:
        scores = scores / cfg.temperature
    if cfg.top_k > 0:
        k = min(max(cfg.top_k, min_tokens_to_keep), scores.shape[-1])
        scores = scores.masked_fill(
            scores < scores.topk(k).values[..., -1:], float("-inf")
        )
    if cfg.top_p < 1.0:
        sorted_scores, order = scores.sort(descending=False)
        remove = sorted_scores.softmax(-1).cumsum(-1) <= 1 - cfg.top_p
        remove[..., -min_tokens_to_keep:] = False
        scores = scores.masked_fill(remove.scatter(1, order, remove), float("-inf"))
    return scores


@dataclass
class StepInputs:
    """Everything a decode step reads, as device tensors of fixed shapes for a whole call: the same function serves
    every step, so it can be compiled and captured once."""

    kv_cache: KVCache
    tokens: torch.Tensor  # (R,) the tokens fed this step
    t: torch.Tensor  # () their number among the new tokens (0-based): own slot t, position real_tokens + t
    real_tokens: torch.Tensor  # (R,) real prompt tokens per row
    prompt_mask: torch.Tensor  # (R, P) bool: the prompt slots a row may see

    @classmethod
    def empty(
        cls, model: Qwen2, items: int, copies: int, prompt_slots: int, new_slots: int
    ) -> "StepInputs":
        device, rows = model.embed_tokens.weight.device, items * copies
        return cls(
            model.empty_kv_cache(items, copies, prompt_slots, new_slots),
            torch.zeros(rows, dtype=torch.long, device=device),
            torch.zeros((), dtype=torch.long, device=device),
            torch.zeros(rows, dtype=torch.long, device=device),
            torch.zeros(rows, prompt_slots, dtype=torch.bool, device=device),
        )


def decode_step(model: Qwen2, inputs: StepInputs):
    """Logits (R, V) after feeding `inputs.tokens` as new token number `inputs.t`; no host synchronisation."""
    rows, new_slots = inputs.tokens.shape[0], inputs.kv_cache.k[0].shape[2]
    # (R, S)
    written = (torch.arange(new_slots, device=inputs.t.device) <= inputs.t).expand(
        rows, new_slots
    )
    key_mask = torch.cat([inputs.prompt_mask, written], dim=1)  # (R, P + S)
    return model.decode(
        inputs.tokens,
        (inputs.real_tokens + inputs.t)[:, None],
        key_mask,
        inputs.kv_cache,
        inputs.t.view(1),
    )


class FastDecodeStep:
    """`decode_step` made cheap per token. compile=True runs it through torch.compile (inductor), with dynamic
    shapes so few compilations serve every call. On CUDA each cache shape's step is also captured as a CUDA graph:
    one launch per token instead of ~25 per layer, which eager decoding of a 7B is bound by. A graph reads its inputs
    (the KV cache included) at fixed addresses, so each shape keeps its `StepInputs` between calls; the `MAX_SHAPES`
    most recently used are kept."""

    MAX_SHAPES = 4

    def __init__(self, compile: bool):
        self.step = torch.compile(decode_step, dynamic=True) if compile else decode_step
        self.shapes = {}  # KVCache.shape -> [StepInputs, CUDA graph or None, its logits]
        self.pool, self.graphs = None, True

    def inputs_for(
        self, model: Qwen2, items: int, copies: int, prompt_slots: int, new_slots: int
    ) -> StepInputs:
        key = (items, items * copies, prompt_slots, new_slots)
        entry = self.shapes.pop(key, None) or [
            StepInputs.empty(model, items, copies, prompt_slots, new_slots),
            None,
            None,
        ]
        if len(self.shapes) >= self.MAX_SHAPES:
            del self.shapes[next(iter(self.shapes))]  # the least recently used
        self.shapes[key] = entry
        return entry[0]

    def __call__(self, model: Qwen2, inputs: StepInputs):
        if inputs.tokens.device.type != "cuda" or not self.graphs:
            return self.step(model, inputs)
        entry = self.shapes[inputs.kv_cache.shape]
        if entry[1] is None:
            try:
                entry[1:] = self._capture(model, inputs)
            # a step that cannot be captured still decodes, only slower
            except RuntimeError as err:
                warnings.warn(
                    f"decoding without CUDA graphs: capture failed ({' '.join(str(err).split())[:200]})"
                )
                self.graphs = False
                return self.step(model, inputs)
        entry[1].replay()
        return entry[2]

    def _capture(self, model: Qwen2, inputs: StepInputs):
        """Warm up on a side stream (compiling on first use), then record one step. The warm-up writes the own slot
        `inputs.t`, which the real step then overwrites before anything reads it."""
        self.pool = self.pool or torch.cuda.graph_pool_handle()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                self.step(model, inputs)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            logits = self.step(model, inputs)
        return graph, logits


def fast_decoding(model: Qwen2, compile: bool) -> Qwen2:
    """From now on `generate` runs this model's decode steps as CUDA graphs on CUDA, and through torch.compile if
    `compile` (on the CPU only that changes anything)."""
    model.fast_decode_step = FastDecodeStep(compile)
    return model


class CachedDecoder:
    """Prefill each item alone into a static cache its `copies` rows share, then feed one token per row per step."""

    def __init__(
        self,
        model: Qwen2,
        inputs_embeds,
        attention_mask,
        max_new_tokens: int,
        copies: int,
    ):
        B, L, _ = inputs_embeds.shape
        prompt_slots, new_slots = bucket(L), bucket(max_new_tokens)
        pad = prompt_slots - L
        # (B, P): left padding up to the bucket
        mask = F.pad(attention_mask.long(), (pad, 0))
        positions = position_ids(mask)  # (B, P): the padding does not shift them
        self.model, self.fast = model, model.fast_decode_step
        self.inputs = (
            self.fast.inputs_for(model, B, copies, prompt_slots, new_slots)
            if self.fast
            else StepInputs.empty(model, B, copies, prompt_slots, new_slots)
        )
        last_hidden = []
        # from its first real slot: no compute on padding
        for item, first in enumerate(mask.argmax(-1).tolist()):
            hidden = model.prefill(
                inputs_embeds[item : item + 1, first - pad :],
                mask[item : item + 1],
                positions[item : item + 1, first:],
                self.inputs.kv_cache,
                item,
                torch.arange(first, prompt_slots, device=mask.device),
            )
            last_hidden.append(hidden[:, -1])
        rows = torch.arange(B, device=mask.device).repeat_interleave(copies)
        # (R, V): the last position only
        self.first_logits = model.lm_head(torch.cat(last_hidden)).float()[rows]
        self.inputs.real_tokens.copy_(mask.sum(-1)[rows])
        self.inputs.prompt_mask.copy_(mask.bool()[rows])
        self.inputs.t.zero_()

    def step(self, tokens):
        """Logits (R, V) after feeding `tokens` (R,) as the next new token; the step counter stays on the device."""
        self.inputs.tokens.copy_(tokens)
        logits = (
            self.fast(self.model, self.inputs)
            if self.fast
            else decode_step(self.model, self.inputs)
        )
        self.inputs.t += 1
        return logits

    def reorder(self, rows, written: int):
        """Row b continues row rows[b] (beam search); `written` own slots hold tokens so far."""
        self.inputs.kv_cache.reorder(rows, written)


class GenerationError(ValueError):
    """Decoding settings or inputs that cannot work together."""


def check(inputs_embeds, attention_mask):
    """GenerationConfig checks itself; this is what it cannot see."""
    if attention_mask.shape != inputs_embeds.shape[:2]:
        raise GenerationError(
            f"attention_mask {tuple(attention_mask.shape)} does not match inputs_embeds "
            f"{tuple(inputs_embeds.shape)}"
        )


def _generator(cfg: GenerationConfig, device):
    return (
        None
        if cfg.seed is None
        else torch.Generator(device=device).manual_seed(cfg.seed)
    )


def _cut_at_eos(row: list[int], eos: list[int]) -> list[int]:
    for i, token in enumerate(row):
        if token in eos:
            return row[: i + 1]
    return row


def _nonfinite_rows(logits):
    """(R,) the rows whose logits are not all finite (NaN features, overflowing weights), and the logits with those
    rows zeroed: such a row stops, its choice is discarded, and argmax, multinomial and top-k need finite numbers (a
    NaN row failed the whole batch's sampling, or steered beam search)."""
    bad = ~logits.isfinite().all(-1)
    return bad, logits.masked_fill(bad[:, None], 0.0)


def _stop_if_unwanted(keep_going, step: int):
    if keep_going is not None and not keep_going():
        raise DecodingStopped(
            f"decoding stopped after {step} new tokens: nobody waits for it any more"
        )


def _greedy_or_sample(
    decoder: CachedDecoder, cfg: GenerationConfig, on_token, keep_going=None
):
    logits, device = decoder.first_logits, decoder.first_logits.device
    N = logits.shape[0]
    eos = torch.tensor(cfg.eos_ids(), dtype=torch.long, device=device)
    generator = _generator(cfg, device)
    tokens = torch.zeros(N, cfg.max_new_tokens, dtype=torch.long, device=device)
    log_prob_sums = torch.zeros(N, device=device)
    finished = torch.zeros(N, dtype=torch.bool, device=device)
    broken = torch.zeros(N, dtype=torch.bool, device=device)
    # a broken row's tokens
    lengths = torch.full((N,), cfg.max_new_tokens, dtype=torch.long, device=device)
    # Asking the device whether every row has ended waits for it; off the CPU, ask every few tokens only (the extra
    # steps' tokens come after an eos and are cut).
    check_every = 1 if device.type == "cpu" or on_token is not None else EOS_CHECK_EVERY
    for t in range(cfg.max_new_tokens):
        _stop_if_unwanted(keep_going, t)
        bad, logits = _nonfinite_rows(logits)
        # a row that had already ended keeps its answer
        lengths.masked_fill_(bad & ~finished, t)
        broken |= bad & ~finished
        finished |= bad
        scores = apply_repetition_penalty(logits, tokens[:, :t], cfg.repetition_penalty)
        if cfg.do_sample:
            probs = warp_scores(scores, cfg, min_tokens_to_keep=1).softmax(-1)
            next_tokens = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        else:
            next_tokens = scores.argmax(-1)
        tokens[:, t] = next_tokens
        log_prob_sums += torch.where(
            finished, 0.0, logits.log_softmax(-1).gather(1, next_tokens[:, None])[:, 0]
        )
        if on_token is not None:
            for row in (~finished).nonzero()[:, 0].tolist():
                on_token(row, int(next_tokens[row]))
        finished |= torch.isin(next_tokens, eos)
        if (
            t + 1 == cfg.max_new_tokens
            or (t + 1) % check_every == 0
            and bool(finished.all())
        ):
            break
        logits = decoder.step(next_tokens)
    sequences = [
        _cut_at_eos(row[:length], cfg.eos_ids())
        for row, length in zip(tokens[:, : t + 1].tolist(), lengths.tolist())
    ]
    return sequences, log_prob_sums.masked_fill(broken, float("nan")).tolist()


class FinishedBeams:
    """The best `num_beams` finished hypotheses of one item, scored sum_logprob / length**length_penalty."""

    def __init__(self, num_beams: int):
        self.num_beams, self.hypotheses = num_beams, []  # [(score, tokens)]

    def add(self, score: float, tokens: list[int]):
        self.hypotheses.append((score, tokens))
        self.hypotheses.sort(key=lambda h: -h[0])
        del self.hypotheses[self.num_beams :]

    def cannot_improve(self, best_running_score: float) -> bool:
        """transformers' rule (early_stopping=False): full, and the best running beam, normalised at the
        current length, does not beat the worst finished one."""
        return (
            len(self.hypotheses) == self.num_beams
            and best_running_score <= self.hypotheses[-1][0]
        )


def _beam_search(
    decoder: CachedDecoder, cfg: GenerationConfig, batch_size: int, keep_going=None
):
    K, logits = cfg.num_beams, decoder.first_logits
    N, V, device = logits.shape[0], logits.shape[1], logits.device
    eos = torch.tensor(cfg.eos_ids(), dtype=torch.long, device=device)
    C = max(2, 1 + len(eos)) * K  # candidates per item
    generator = _generator(cfg, device)
    item_offset = torch.arange(batch_size, device=device)[:, None] * K  # (B, 1)
    # for the repetition penalty
    running = torch.zeros(N, cfg.max_new_tokens, dtype=torch.long, device=device)
    # the same tokens on the host, for the hypotheses that finish
    histories = [[] for _ in range(N)]
    running_scores = torch.full((batch_size, K), -1e9, device=device)
    running_scores[:, 0] = 0  # the K copies are identical: start from one
    finished = [FinishedBeams(K) for _ in range(batch_size)]
    # broken: an item whose logits turned non-finite
    done, broken = (
        [False] * batch_size,
        [False] * batch_size,
    )
    for t in range(cfg.max_new_tokens):
        _stop_if_unwanted(keep_going, t)
        bad, logits = _nonfinite_rows(logits)
        log_probs = apply_repetition_penalty(
            logits.log_softmax(-1), running[:, :t], cfg.repetition_penalty
        )
        if cfg.do_sample:
            log_probs = warp_scores(log_probs, cfg, min_tokens_to_keep=len(eos) + 1)
        total = (log_probs + running_scores.view(N, 1)).view(batch_size, K * V)
        if cfg.do_sample:
            picked = torch.multinomial(total.softmax(-1), C, generator=generator)
            scores, order = total.gather(1, picked).sort(descending=True)
            picked = picked.gather(1, order)
        else:
            scores, picked = total.topk(C)  # (B, C)
        source_row, token = picked // V + item_offset, picked % V  # (B, C)
        length = t + 1
        ends = torch.isin(token, eos) | (length == cfg.max_new_tokens)
        # The best K candidates that did not end continue.
        running_scores, keep = (scores - 1e9 * ends.float()).topk(K)  # (B, K)
        rows = source_row.gather(1, keep).view(N)
        running = running[rows]
        running[:, t] = token.gather(1, keep).view(N)
        # The step's one transfer to the host: each candidate's normalised score, row, token and end, the kept ones,
        # each item's best running score and whether a beam of it broke (whole numbers are exact in float64).
        host = torch.cat(
            [
                x.double()
                for x in (
                    scores / length**cfg.length_penalty,
                    source_row,
                    token,
                    ends,
                    keep,
                    running_scores[:, :1] / length**cfg.length_penalty,
                    bad.view(batch_size, K).any(-1, keepdim=True),
                )
            ],
            1,
        ).tolist()
        for b, values in enumerate(host):
            # the model broke on this item: it ends, with no answer
            if values[-1] and not done[b]:
                done[b] = broken[b] = True
            normalised, sources, tokens, ended = (
                values[i * C : (i + 1) * C] for i in range(4)
            )
            for rank in range(K):  # only the top K candidates may finish
                if not done[b] and ended[rank]:
                    finished[b].add(
                        normalised[rank],
                        histories[int(sources[rank])] + [int(tokens[rank])],
                    )
            kept = [int(c) for c in values[4 * C : 4 * C + K]]
            histories[b * K : (b + 1) * K] = [
                histories[int(sources[c])] + [int(tokens[c])] for c in kept
            ]
            done[b] = done[b] or finished[b].cannot_improve(values[-2])
        if all(done) or length == cfg.max_new_tokens:
            break
        decoder.reorder(rows, written=t)
        logits = decoder.step(running[:, t])
    best = [
        h
        for item, failed in zip(finished, broken)
        for h in (
            [(float("nan"), [])] * cfg.num_return_sequences
            if failed
            else item.hypotheses[: cfg.num_return_sequences]
        )
    ]
    return [tokens for _, tokens in best], [score for score, _ in best]


@torch.inference_mode()
def generate(
    model: Qwen2,
    inputs_embeds,
    attention_mask=None,
    config: GenerationConfig = DEFAULT_DECODING,
    on_token=None,
    return_scores: bool = False,
    keep_going=None,
):
    """New token ids per row, B * num_return_sequences rows item-major; with `return_scores`, also
    (beam) transformers' `sequences_scores` or (greedy/sampling) each row's summed log-probability. A row whose
    logits turn non-finite stops there, scored NaN (beam search: its item, with no tokens); the others go on as alone.

    inputs_embeds (B, L, H) left-padded; attention_mask (B, L) 0/1. `on_token(row, token_id)` streams greedy and
    sampled tokens as they are chosen. `keep_going()` is asked before every step; when it says no, DecodingStopped.
    """
    B, L, _ = inputs_embeds.shape
    if attention_mask is None:
        attention_mask = torch.ones(B, L, dtype=torch.long, device=inputs_embeds.device)
    check(inputs_embeds, attention_mask)
    beam = config.num_beams > 1
    copies = config.num_beams if beam else config.num_return_sequences
    inputs_embeds = inputs_embeds.to(model.embed_tokens.weight.dtype)
    decoder = CachedDecoder(
        model, inputs_embeds, attention_mask, config.max_new_tokens, copies
    )
    if beam:
        sequences, scores = _beam_search(decoder, config, B, keep_going)
    else:
        sequences, scores = _greedy_or_sample(decoder, config, on_token, keep_going)
    return (sequences, scores) if return_scores else sequences
