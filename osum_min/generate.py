"""Decoding for the Qwen2 decoder: greedy, sampling, beam search and beam-sample, with transformers' semantics.

The prompt arrives as embeddings (OSUM feeds speech), left-padded with a 0/1 mask. Each item is prefilled once,
alone, into the static KV cache, which its beams or samples then share (kv_cache.py), and every decode step feeds
one token per row. Position ids are the count of real tokens before a slot, so left padding never shifts them, and a
row in a batch is the same math as alone. Only rounding differs (kernels block sums by the number of rows), which
can, rarely, tip a near-tie in beam search the other way. Outputs hold the new tokens only, ending with the eos
when one was hit.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .qwen2 import Qwen2

from .tokenizer import EOD_ID as ENDOFTEXT  # Qwen2's <|endoftext|>, OSUM's hard-coded eos


@dataclass
class GenerationConfig:
    max_new_tokens: int = 400
    num_beams: int = 1
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    length_penalty: float = 1.0
    num_return_sequences: int = 1
    eos_token_id: int | list[int] | None = ENDOFTEXT
    seed: int | None = None  # None: draw from torch's global generator

    def eos_ids(self) -> list[int]:
        eos = self.eos_token_id
        return [] if eos is None else [eos] if isinstance(eos, int) else list(eos)


# The original's hard-coded decoding: beam search with sampling (transformers' "beam-sample"), not deterministic.
ORIGINAL_DECODING = GenerationConfig(max_new_tokens=400, num_beams=4, do_sample=True, top_k=5, top_p=0.9,
                                     repetition_penalty=1.05, eos_token_id=ENDOFTEXT)
# The same beam width and penalty without sampling, so a transcript is reproducible.
DEFAULT_DECODING = GenerationConfig(max_new_tokens=400, num_beams=4, repetition_penalty=1.05, eos_token_id=ENDOFTEXT)


def apply_repetition_penalty(scores, generated, penalty: float):
    """transformers' rule on every token already generated in the row: negative scores *= p, positive /= p."""
    if penalty == 1.0 or generated.shape[1] == 0:
        return scores
    seen = scores.gather(1, generated)
    return scores.scatter(1, generated, torch.where(seen < 0, seen * penalty, seen / penalty))


def warp_scores(scores, cfg: GenerationConfig, min_tokens_to_keep: int):
    """Temperature, then top-k, then top-p (nucleus), in transformers' order; removed tokens get -inf."""
    if cfg.temperature != 1.0:
        scores = scores / cfg.temperature
    if cfg.top_k > 0:
        k = min(max(cfg.top_k, min_tokens_to_keep), scores.shape[-1])
        scores = scores.masked_fill(scores < scores.topk(k).values[..., -1:], float("-inf"))
    if cfg.top_p < 1.0:
        sorted_scores, order = scores.sort(descending=False)
        remove = sorted_scores.softmax(-1).cumsum(-1) <= 1 - cfg.top_p
        remove[..., -min_tokens_to_keep:] = False
        scores = scores.masked_fill(remove.scatter(1, order, remove), float("-inf"))
    return scores


class CachedDecoder:
    """Prefill each item alone, share its cache with `copies` rows, then feed one token per row per step."""

    def __init__(self, model: Qwen2, inputs_embeds, attention_mask, max_new_tokens: int, copies: int):
        B, L, _ = inputs_embeds.shape
        self.model, self.prompt_len = model, L
        mask = attention_mask.long()
        self.real_tokens = mask.sum(-1)  # (B,)
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)  # (B, L)
        model.setup_kv_cache(B, L if copies > 1 else L + max_new_tokens, device=inputs_embeds.device)
        last_hidden = []
        for row, first in enumerate(mask.argmax(-1).tolist()):  # from its first real slot: no compute on padding
            with model.kv_cache_rows(slice(row, row + 1)):
                hidden = model.forward_hidden(inputs_embeds=inputs_embeds[row:row + 1, first:],
                                              attention_mask=mask[row:row + 1],
                                              position_ids=positions[row:row + 1, first:],
                                              cache_pos=torch.arange(first, L, device=mask.device))
            last_hidden.append(hidden[:, -1])
        self.first_logits = model.lm_head(torch.cat(last_hidden)).float()  # (B, V): the last position only
        # Slots after the prompt are all real; each step passes the mask of the slots written so far.
        self.slot_mask = F.pad(mask, (0, max_new_tokens), value=1)  # (B, L + max_new)
        if copies > 1:
            model.share_kv_prompt(copies, max_new_tokens)
            rows = torch.arange(B, device=mask.device).repeat_interleave(copies)
            self.slot_mask, self.real_tokens = self.slot_mask[rows], self.real_tokens[rows]
            self.first_logits = self.first_logits[rows]

    def step(self, tokens, t: int):
        """Logits (N, V) after feeding `tokens` (N,) as generated token number t (0-based)."""
        cache_pos = torch.tensor([self.prompt_len + t], device=tokens.device)
        positions = (self.real_tokens + t)[:, None]  # (N, 1)
        logits = self.model(input_ids=tokens[:, None], attention_mask=self.slot_mask[:, :self.prompt_len + t + 1],
                            position_ids=positions, cache_pos=cache_pos)  # attention reads the slots written
        return logits[:, -1].float()


class GenerationError(ValueError):
    """Decoding settings or inputs that cannot work together."""


def check(cfg: GenerationConfig, inputs_embeds, attention_mask):
    if cfg.max_new_tokens < 1 or cfg.num_beams < 1 or cfg.num_return_sequences < 1:
        raise GenerationError(f"max_new_tokens, num_beams and num_return_sequences must be >= 1: {cfg}")
    most = cfg.num_beams if cfg.num_beams > 1 else None if cfg.do_sample else 1
    if most is not None and cfg.num_return_sequences > most:
        raise GenerationError(f"num_return_sequences={cfg.num_return_sequences} needs sampling or as many beams")
    if attention_mask.shape != inputs_embeds.shape[:2]:
        raise GenerationError(f"attention_mask {tuple(attention_mask.shape)} does not match inputs_embeds "
                              f"{tuple(inputs_embeds.shape)}")


def _generator(cfg: GenerationConfig, device):
    return None if cfg.seed is None else torch.Generator(device=device).manual_seed(cfg.seed)


def _cut_at_eos(row: list[int], eos: list[int]) -> list[int]:
    for i, token in enumerate(row):
        if token in eos:
            return row[:i + 1]
    return row


def _greedy_or_sample(decoder: CachedDecoder, cfg: GenerationConfig, on_token):
    logits, device = decoder.first_logits, decoder.first_logits.device
    N = logits.shape[0]
    eos = torch.tensor(cfg.eos_ids(), dtype=torch.long, device=device)
    generator = _generator(cfg, device)
    tokens = torch.zeros(N, cfg.max_new_tokens, dtype=torch.long, device=device)
    log_prob_sums = torch.zeros(N, device=device)
    finished = torch.zeros(N, dtype=torch.bool, device=device)
    for t in range(cfg.max_new_tokens):
        scores = apply_repetition_penalty(logits, tokens[:, :t], cfg.repetition_penalty)
        if cfg.do_sample:
            probs = warp_scores(scores, cfg, min_tokens_to_keep=1).softmax(-1)
            next_tokens = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        else:
            next_tokens = scores.argmax(-1)
        tokens[:, t] = next_tokens
        log_prob_sums += torch.where(finished, 0.0, logits.log_softmax(-1).gather(1, next_tokens[:, None])[:, 0])
        if on_token is not None:
            for row in (~finished).nonzero()[:, 0].tolist():
                on_token(row, int(next_tokens[row]))
        finished |= torch.isin(next_tokens, eos)
        if bool(finished.all()) or t + 1 == cfg.max_new_tokens:
            break
        logits = decoder.step(next_tokens, t)
    sequences = [_cut_at_eos(row, cfg.eos_ids()) for row in tokens[:, :t + 1].tolist()]
    return sequences, log_prob_sums.tolist()


class FinishedBeams:
    """The best `num_beams` finished hypotheses of one item, scored sum_logprob / length**length_penalty."""

    def __init__(self, num_beams: int):
        self.num_beams, self.hypotheses = num_beams, []  # [(score, tokens)]

    def add(self, score: float, tokens: list[int]):
        self.hypotheses.append((score, tokens))
        self.hypotheses.sort(key=lambda h: -h[0])
        del self.hypotheses[self.num_beams:]

    def cannot_improve(self, best_running_score: float) -> bool:
        """transformers' rule (early_stopping=False): full, and the best running beam, normalised at the
        current length, does not beat the worst finished one."""
        return len(self.hypotheses) == self.num_beams and best_running_score <= self.hypotheses[-1][0]


def _beam_search(decoder: CachedDecoder, cfg: GenerationConfig, batch_size: int):
    K, logits = cfg.num_beams, decoder.first_logits
    N, V, device = logits.shape[0], logits.shape[1], logits.device
    eos = torch.tensor(cfg.eos_ids(), dtype=torch.long, device=device)
    candidates_per_item = max(2, 1 + len(eos)) * K
    generator = _generator(cfg, device)
    item_offset = torch.arange(batch_size, device=device)[:, None] * K  # (B, 1)
    running = torch.zeros(N, cfg.max_new_tokens, dtype=torch.long, device=device)
    running_scores = torch.full((batch_size, K), -1e9, device=device)
    running_scores[:, 0] = 0  # the K copies are identical: start from one
    finished = [FinishedBeams(K) for _ in range(batch_size)]
    done = [False] * batch_size
    for t in range(cfg.max_new_tokens):
        log_probs = apply_repetition_penalty(logits.log_softmax(-1), running[:, :t], cfg.repetition_penalty)
        if cfg.do_sample:
            log_probs = warp_scores(log_probs, cfg, min_tokens_to_keep=len(eos) + 1)
        total = (log_probs + running_scores.view(N, 1)).view(batch_size, K * V)
        if cfg.do_sample:
            picked = torch.multinomial(total.softmax(-1), candidates_per_item, generator=generator)
            scores, order = total.gather(1, picked).sort(descending=True)
            picked = picked.gather(1, order)
        else:
            scores, picked = total.topk(candidates_per_item)  # (B, 2K)
        source_row, token = picked // V + item_offset, picked % V  # (B, 2K)
        length = t + 1
        ends = torch.isin(token, eos) | (length == cfg.max_new_tokens)
        normalised = (scores / length ** cfg.length_penalty).tolist()
        history, sources, tokens, ended = running[:, :t].tolist(), source_row.tolist(), token.tolist(), ends.tolist()
        for b in range(batch_size):
            for rank in range(K):  # only the top K candidates may finish
                if not done[b] and ended[b][rank]:
                    finished[b].add(normalised[b][rank], history[sources[b][rank]] + [tokens[b][rank]])
        # The best K candidates that did not end continue.
        open_scores = scores - 1e9 * ends.float()
        running_scores, keep = open_scores.topk(K)  # (B, K)
        rows = source_row.gather(1, keep).view(N)
        running = running[rows]
        running[:, t] = token.gather(1, keep).view(N)
        best_possible = (running_scores[:, 0] / length ** cfg.length_penalty).tolist()
        done = [done[b] or finished[b].cannot_improve(best_possible[b]) for b in range(batch_size)]
        if all(done) or length == cfg.max_new_tokens:
            break
        decoder.model.reorder_kv_cache(rows, length=decoder.prompt_len + t)
        logits = decoder.step(running[:, t], t)
    best = [h for item in finished for h in item.hypotheses[:cfg.num_return_sequences]]
    return [tokens for _, tokens in best], [score for score, _ in best]


@torch.inference_mode()
def generate(model: Qwen2, inputs_embeds, attention_mask=None, config: GenerationConfig = DEFAULT_DECODING,
             on_token=None, return_scores: bool = False):
    """New token ids per row, B * num_return_sequences rows item-major; with `return_scores`, also
    (beam) transformers' `sequences_scores` or (greedy/sampling) each row's summed log-probability.

    inputs_embeds (B, L, H) left-padded; attention_mask (B, L) 0/1. `on_token(row, token_id)` streams greedy and
    sampled tokens as they are chosen.
    """
    B, L, _ = inputs_embeds.shape
    if attention_mask is None:
        attention_mask = torch.ones(B, L, dtype=torch.long, device=inputs_embeds.device)
    check(config, inputs_embeds, attention_mask)
    beam = config.num_beams > 1
    copies = config.num_beams if beam else config.num_return_sequences
    inputs_embeds = inputs_embeds.to(model.embed_tokens.weight.dtype)
    try:
        decoder = CachedDecoder(model, inputs_embeds, attention_mask, config.max_new_tokens, copies)
        if beam:
            sequences, scores = _beam_search(decoder, config, B)
        else:
            sequences, scores = _greedy_or_sample(decoder, config, on_token)
    finally:
        model.clear_kv_cache()
    return (sequences, scores) if return_scores else sequences
