"""Reference twin for the Qwen2 tests.

The same random weights in transformers' Qwen2ForCausalLM + peft LoRA and in ours."""

import pytest
import torch

from osum_min.model.qwen2 import LORA_TARGETS, Qwen2, Qwen2Config, hf_key_to_ours
from osum_min.weights import load_state_dict_strict

TINY = Qwen2Config(
    vocab_size=256,
    dim=64,
    ff_dim=128,
    layers=2,
    heads=4,
    kv_heads=2,
    rope_theta=10000.0,
    norm_eps=1e-6,
    max_positions=512,
    lora_rank=8,
    lora_alpha=32.0,
    lora_dropout=0.1,
)


def hf_config(cfg: Qwen2Config):
    transformers = pytest.importorskip("transformers")
    return transformers.Qwen2Config(**cfg.to_hf(), initializer_range=0.1)


def peft_twin(
    cfg: Qwen2Config = TINY,
    seed: int = 0,
    lora_b_std: float = 0.05,
    device="cpu",
    dtype: torch.dtype = torch.float32,
):
    """(transformers + peft model, our Qwen2) with identical random weights and non-zero LoRA B, both in eval, built
    on `device` in `dtype` (bench/gpu.py builds the released 7B on the GPU this way; ours is never materialised
    apart from the reference's weights)."""
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    torch.manual_seed(seed)
    default_dtype = torch.get_default_dtype()
    # transformers builds its weights in the default dtype
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            hf = transformers.Qwen2ForCausalLM(hf_config(cfg))
    finally:
        torch.set_default_dtype(default_dtype)
    hf = peft.get_peft_model(
        hf,
        peft.LoraConfig(
            r=cfg.lora_rank,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=list(LORA_TARGETS),
            task_type="CAUSAL_LM",
        ),
    )
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in hf.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * lora_b_std)
    with torch.device("meta"):
        ours = Qwen2(cfg)
    state = {
        hf_key_to_ours(k): v for k, v in hf.state_dict().items() if hf_key_to_ours(k)
    }
    load_state_dict_strict(ours, {k: v.clone() for k, v in state.items()}, "peft twin")
    return hf.eval(), ours.eval()
