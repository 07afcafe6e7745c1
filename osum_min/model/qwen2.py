"""Qwen2 decoder (OSUM's LLM) with LoRA adapters and a static, preallocated KV cache.

Math follows Hugging Face `Qwen2ForCausalLM` so logits agree to float32 noise: RMSNorm in float32, rotate-half
RoPE, grouped-query attention with q/k/v bias, SwiGLU MLP. Three ways through the layers: a whole sequence without
a cache (training), one item's prompt into the static KV cache (kv_cache.py, plain storage), and one decode step of
fixed shapes over that cache, which generate.py can compile and capture as a CUDA graph.
"""

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..config_check import ConfigError, check_config, check_divides
from .kv_cache import KVCache
from .linear import Linear, linear
from ..weights import WeightsError, load_state_dict_strict

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "down_proj")
PROJECTIONS = (*LORA_TARGETS, "up_proj")


@dataclass
class Qwen2Config:
    vocab_size: int = 151936
    dim: int = 896
    ff_dim: int = 4864
    layers: int = 24
    heads: int = 14
    kv_heads: int = 2
    rope_theta: float = 1_000_000.0
    norm_eps: float = 1e-6
    tie_embeddings: bool = False
    max_positions: int = 32768
    lora_rank: int = 0  # 0 = no LoRA
    lora_alpha: float = 32.0
    lora_dropout: float = 0.0
    lora_targets: tuple = LORA_TARGETS

    def __post_init__(self):
        """lora_rank 0 means no LoRA; lora_alpha is checked above 0 even then (a negative one would flip the update)."""
        check_config(
            self, minimum={"lora_rank": 0, "lora_dropout": 0}, below={"lora_dropout": 1}
        )
        check_divides(self, "heads", "dim")
        check_divides(self, "kv_heads", "heads")
        if self.head_dim % 2:  # rotate-half RoPE pairs the two halves of each head
            raise ConfigError(
                "dim",
                self.dim,
                f"gives heads of odd width {self.head_dim} (RoPE needs an even one)",
            )
        if not isinstance(self.lora_targets, tuple) or not all(
            name in PROJECTIONS for name in self.lora_targets
        ):
            raise ConfigError(
                "lora_targets",
                self.lora_targets,
                f"not a list of {', '.join(PROJECTIONS)}",
            )

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    @classmethod
    def from_hf(cls, config: dict, **overrides) -> "Qwen2Config":
        """Read a Hugging Face Qwen2 `config.json` dict; `overrides` set fields HF does not carry (LoRA)."""
        values = {
            ours: config[theirs]
            for ours, theirs in HF_CONFIG_NAMES.items()
            if theirs in config
        }
        # transformers >= 5 / older
        rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
        if rope.get("rope_type", rope.get("type", "default")) != "default":
            raise WeightsError(
                f"Qwen2 config: RoPE scaling {rope} is not supported (plain RoPE only)"
            )
        if config.get("use_sliding_window"):
            raise WeightsError(
                "Qwen2 config: use_sliding_window=true is not supported (full attention only)"
            )
        if "rope_theta" in rope:
            values["rope_theta"] = rope["rope_theta"]
        values.setdefault("kv_heads", values.get("heads", cls.kv_heads))
        values.update(overrides)
        return cls(**values)

    def to_hf(self) -> dict:
        """The Hugging Face `Qwen2Config` fields of this model (plain RoPE, full attention)."""
        return {
            theirs: getattr(self, ours) for ours, theirs in HF_CONFIG_NAMES.items()
        } | {"use_sliding_window": False}


HF_CONFIG_NAMES = {
    "vocab_size": "vocab_size",
    "dim": "hidden_size",
    "ff_dim": "intermediate_size",
    "layers": "num_hidden_layers",
    "heads": "num_attention_heads",
    "kv_heads": "num_key_value_heads",
    "rope_theta": "rope_theta",
    "norm_eps": "rms_norm_eps",
    "tie_embeddings": "tie_word_embeddings",
    "max_positions": "max_position_embeddings",
}


_QWEN2_SMALL = dict(vocab_size=151936, kv_heads=2, tie_embeddings=True)
LLM_PRESETS = {
    "qwen2-7b": Qwen2Config(
        vocab_size=152064,
        dim=3584,
        ff_dim=18944,
        layers=28,
        heads=28,
        kv_heads=4,
        max_positions=131072,
        lora_rank=8,
        lora_alpha=32.0,
        lora_dropout=0.1,
    ),
    "qwen2-0.5b": Qwen2Config(
        dim=896, ff_dim=4864, layers=24, heads=14, max_positions=131072, **_QWEN2_SMALL
    ),
    "qwen2.5-0.5b": Qwen2Config(
        dim=896, ff_dim=4864, layers=24, heads=14, max_positions=32768, **_QWEN2_SMALL
    ),
    "qwen2-1.5b": Qwen2Config(
        dim=1536, ff_dim=8960, layers=28, heads=12, max_positions=131072, **_QWEN2_SMALL
    ),
    "qwen2.5-1.5b": Qwen2Config(
        dim=1536, ff_dim=8960, layers=28, heads=12, max_positions=32768, **_QWEN2_SMALL
    ),
}


class LoRALinear(Linear):
    """nn.Linear plus a low-rank update: base(x) + (alpha/r) * B(A(dropout(x))), mergeable into the weight."""

    def __init__(self, in_features, out_features, bias, rank, alpha, dropout):
        super().__init__(in_features, out_features, bias=bias)
        self.scaling = alpha / rank
        self.lora_A = nn.Parameter(torch.empty(rank, in_features))  # (r, in)
        # (out, r): zero, so training starts at base
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # peft's default
        self.lora_dropout = nn.Dropout(dropout)
        self.merged = False

    def forward(self, x):
        out = linear(x, self.weight, self.bias)
        if self.merged:
            return out
        return out + self.scaling * F.linear(
            F.linear(self.lora_dropout(x), self.lora_A), self.lora_B
        )

    def _delta(self):
        return (self.scaling * (self.lora_B.float() @ self.lora_A.float())).to(
            self.weight.dtype
        )

    @torch.no_grad()
    def merge(self):
        if not self.merged:
            self.weight += self._delta()
            self.merged = True

    @torch.no_grad()
    def unmerge(self):
        if self.merged:
            self.weight -= self._delta()
            self.merged = False


def _projection(
    cfg: Qwen2Config, name: str, d_in: int, d_out: int, bias: bool = False
) -> nn.Linear:
    """The layer's `name` projection: a LoRALinear where the config puts LoRA, else a plain Linear."""
    if cfg.lora_rank > 0 and name in cfg.lora_targets:
        return LoRALinear(
            d_in, d_out, bias, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout
        )
    return Linear(d_in, d_out, bias=bias)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def rope_cos_sin(position_ids, head_dim: int, theta: float, dtype):
    """cos/sin tables (B, 1, L, head_dim) for rotate-half RoPE at the given positions, computed in float32."""
    inv_freq = 1.0 / theta ** (
        torch.arange(0, head_dim, 2, device=position_ids.device).float() / head_dim
    )
    angles = position_ids.float()[..., None] * inv_freq  # (B, L, head_dim/2)
    angles = torch.cat((angles, angles), dim=-1)[:, None]  # (B, 1, L, head_dim)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x, cos, sin):
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class Attention(nn.Module):
    def __init__(self, cfg: Qwen2Config, layer_index: int):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = cfg.heads, cfg.kv_heads, cfg.head_dim
        self.layer_index = layer_index  # this layer's share of the KV cache
        self.q_proj = _projection(
            cfg, "q_proj", cfg.dim, cfg.heads * cfg.head_dim, bias=True
        )
        self.k_proj = _projection(
            cfg, "k_proj", cfg.dim, cfg.kv_heads * cfg.head_dim, bias=True
        )
        self.v_proj = _projection(
            cfg, "v_proj", cfg.dim, cfg.kv_heads * cfg.head_dim, bias=True
        )
        self.o_proj = _projection(cfg, "o_proj", cfg.heads * cfg.head_dim, cfg.dim)

    def forward(
        self,
        x,
        cos,
        sin,
        mask,
        kv_cache: KVCache | None = None,
        slots=None,
        item: int | None = None,
    ):
        """Without a cache: attention over x itself (training, full forwards). With one, `item` given: prefill that
        item's prompt at cache slots `slots`; `item` None: decode one new token per row at own slot `slots`."""
        B, L, _ = x.shape
        # (B, H, L, hd)
        q = self.q_proj(x).view(B, L, self.heads, self.head_dim).transpose(1, 2)
        # (B, Hkv, L, hd)
        k = self.k_proj(x).view(B, L, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, L, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        gqa = self.heads != self.kv_heads
        if kv_cache is None:
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=mask is None, enable_gqa=gqa
            )
        elif item is not None:
            # (1, Hkv, P, hd)
            k, v = kv_cache.write_prompt(self.layer_index, item, slots, k, v)
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, enable_gqa=gqa
            )
        else:
            out = attend_new_token(
                q, *kv_cache.write_new(self.layer_index, slots, k, v), mask
            )
        return self.o_proj(
            out.reshape(B, self.heads, L, self.head_dim)
            .transpose(1, 2)
            .reshape(B, L, -1)
        )


def attend_new_token(q, prompt_k, prompt_v, k, v, mask):
    """One decode step's attention: each row's query against its item's prompt and its own slots, one softmax over
    both, in float32. The prompt part is one matmul per item whose rows are all its rows' query heads.

    q (R, H, 1, hd); prompt_k, prompt_v (items, Hkv, P, hd); k, v (R, Hkv, S, hd); mask (R, 1, 1, P + S) boolean
    -> (R, Hkv, H/Hkv, hd).
    """
    items, kv_heads, P, head_dim = prompt_k.shape
    R, H = q.shape[:2]
    copies, group = R // items, H // kv_heads

    def per_item(x):  # (R, Hkv, G, X) -> (items, Hkv, copies * G, X)
        return (
            x.reshape(items, copies, kv_heads, group, -1)
            .transpose(1, 2)
            .reshape(items, kv_heads, -1, x.shape[-1])
        )

    def per_row(x):  # the inverse
        return (
            x.reshape(items, kv_heads, copies, group, -1)
            .transpose(1, 2)
            .reshape(R, kv_heads, group, x.shape[-1])
        )

    q = q.float().reshape(R, kv_heads, group, head_dim) * head_dim**-0.5
    # (R, Hkv, G, P)
    prompt_scores = per_row(per_item(q) @ prompt_k.float().transpose(2, 3))
    # (R, Hkv, G, P + S)
    scores = torch.cat([prompt_scores, q @ k.float().transpose(2, 3)], dim=-1)
    weights = scores.masked_fill(~mask, float("-inf")).softmax(-1)
    out = (
        per_row(per_item(weights[..., :P]) @ prompt_v.float())
        + weights[..., P:] @ v.float()
    )
    return out.to(k.dtype)


class MLP(nn.Module):
    def __init__(self, cfg: Qwen2Config):
        super().__init__()
        self.gate_proj = _projection(cfg, "gate_proj", cfg.dim, cfg.ff_dim)
        self.up_proj = _projection(cfg, "up_proj", cfg.dim, cfg.ff_dim)
        self.down_proj = _projection(cfg, "down_proj", cfg.ff_dim, cfg.dim)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: Qwen2Config, index: int):
        super().__init__()
        self.self_attn = Attention(cfg, index)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)

    def forward(self, x, cos, sin, mask, kv_cache=None, slots=None, item=None):
        x = x + self.self_attn(
            self.input_layernorm(x), cos, sin, mask, kv_cache, slots, item
        )
        return x + self.mlp(self.post_attention_layernorm(x))


def attention_mask_for(key_mask, query_slots, num_key_slots: int):
    """Boolean SDPA mask (B|1, 1, L, S): causal over slots, AND the 0/1 key mask (B, S) if given.

    A query row that may see no key at all (left padding) is opened to every key, as transformers does, so it
    yields finite garbage instead of NaN; its output is never used.
    """
    key_slots = torch.arange(num_key_slots, device=query_slots.device)
    allowed = (key_slots[None, :] <= query_slots[:, None])[None, None]  # (1, 1, L, S)
    if key_mask is not None:
        allowed = allowed & key_mask.bool()[:, None, None, :]  # (B, 1, L, S)
    return allowed | ~allowed.any(dim=-1, keepdim=True)


class Qwen2(nn.Module):
    def __init__(self, cfg: Qwen2Config):
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.dim)
        # Qwen2's initializer_range, not PyTorch's N(0, 1): in a model trained from scratch, unit-size token
        # embeddings drown the speech embeddings in the residual stream and the LLM learns to listen far later
        nn.init.normal_(self.embed_tokens.weight, std=0.02)
        self.layers = nn.ModuleList(
            DecoderLayer(cfg, index) for index in range(cfg.layers)
        )
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.lm_head = Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.fast_decode_step = None  # generate.fast_decoding sets it

    def forward(
        self, input_ids=None, inputs_embeds=None, attention_mask=None, position_ids=None
    ):
        """Logits (B, L, V) of a whole sequence, no cache; `attention_mask` is a (B, L) 0/1 key mask."""
        return self.lm_head(
            self.forward_hidden(input_ids, inputs_embeds, attention_mask, position_ids)
        )

    def forward_hidden(
        self, input_ids=None, inputs_embeds=None, attention_mask=None, position_ids=None
    ):
        """Final-normed hidden states (B, L, H); the caller applies `lm_head` where it needs logits."""
        # (B, L, H)
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        B, L, _ = x.shape
        slots = torch.arange(L, device=x.device)
        if position_ids is None:
            position_ids = slots[None].expand(B, L)
        mask = (
            None
            if attention_mask is None
            else attention_mask_for(attention_mask, slots, L)
        )
        return self._layers(x, position_ids, mask)

    def prefill(
        self, inputs_embeds, key_mask, position_ids, kv_cache: KVCache, item: int, slots
    ):
        """One item's prompt embeddings (1, L, H) into its cache at prompt slots `slots` (L,), attending over the
        prompt slots allowed by `key_mask` (1, P) -> final-normed hidden states (1, L, H)."""
        mask = attention_mask_for(key_mask, slots, key_mask.shape[1])
        return self._layers(inputs_embeds, position_ids, mask, kv_cache, slots, item)

    def decode(self, tokens, position_ids, key_mask, kv_cache: KVCache, slot):
        """One new token per row: tokens (R,) at own slot `slot` (1,), positions (R, 1), over the prompt and own
        slots allowed by `key_mask` (R, P + S) -> float32 logits (R, V). Every shape is fixed for a whole call."""
        x = self.embed_tokens(tokens[:, None])  # (R, 1, H)
        hidden = self._layers(
            x, position_ids, key_mask[:, None, None, :], kv_cache, slot
        )
        return self.lm_head(hidden[:, 0]).float()

    def _layers(self, x, position_ids, mask, kv_cache=None, slots=None, item=None):
        cos, sin = rope_cos_sin(
            position_ids, self.config.head_dim, self.config.rope_theta, x.dtype
        )
        for layer in self.layers:
            x = layer(x, cos, sin, mask, kv_cache, slots, item)
        return self.norm(x)

    def empty_kv_cache(
        self, items: int, copies: int, prompt_slots: int, new_slots: int
    ) -> KVCache:
        weight, cfg = self.embed_tokens.weight, self.config
        return KVCache.empty(
            cfg.layers,
            items,
            copies,
            cfg.kv_heads,
            prompt_slots,
            new_slots,
            cfg.head_dim,
            weight.device,
            weight.dtype,
        )

    # LoRA -----------------------------------------------------------------------------------------------------
    def merge_lora(self):
        """Fold every adapter into its base weight (inference speed); idempotent."""
        for module in self.modules():
            if isinstance(module, LoRALinear):
                module.merge()

    def unmerge_lora(self):
        for module in self.modules():
            if isinstance(module, LoRALinear):
                module.unmerge()


# Hugging Face / peft keys -> ours. Applied in order; keys that end up outside our module tree map to None.
HF_KEY_RULES = (
    (r"^base_model\.model\.", ""),  # peft wrapper
    (r"^model\.", ""),  # Qwen2ForCausalLM.model
    (r"\.base_layer\.", "."),  # peft >= 0.7 wraps the frozen linear
    (r"\.lora_([AB])\.default\.weight$", r".lora_\1"),  # peft adapter named "default"
)
OUR_KEY = re.compile(
    r"(embed_tokens\.weight|norm\.weight|lm_head\.weight"
    r"|layers\.\d+\.(input_layernorm|post_attention_layernorm)\.weight"
    r"|layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)\.(weight|bias|lora_A|lora_B))"
)


def hf_key_to_ours(key: str) -> str | None:
    for pattern, replacement in HF_KEY_RULES:
        key = re.sub(pattern, replacement, key)
    return key if OUR_KEY.fullmatch(key) else None


def load_hf_checkpoint(directory, dtype=None, **config_overrides) -> Qwen2:
    """A Hugging Face Qwen2 checkpoint directory (config.json + safetensors shards) as a Qwen2, loaded strictly."""
    from safetensors.torch import load_file

    directory = Path(directory)
    try:
        config = Qwen2Config.from_hf(
            json.loads((directory / "config.json").read_text()), **config_overrides
        )
    # ValueError: invalid JSON, a value out of range
    except (
        OSError,
        ValueError,
        TypeError,
    ) as err:
        raise WeightsError(
            f"{directory / 'config.json'}: cannot read a Qwen2 config ({err})"
        ) from None
    index = directory / "model.safetensors.index.json"
    shards = (
        sorted(set(json.loads(index.read_text())["weight_map"].values()))
        if index.exists()
        else sorted(p.name for p in directory.glob("*.safetensors"))
    )
    if not shards:
        raise WeightsError(f"{directory}: no *.safetensors files")
    state = {}
    for shard in shards:
        for key, tensor in load_file(directory / shard).items():
            ours = hf_key_to_ours(key)
            if ours is not None:
                state[ours] = tensor if dtype is None else tensor.to(dtype)
    with torch.device("meta"):
        model = Qwen2(config)
    return load_state_dict_strict(model, state, str(directory)).eval()
