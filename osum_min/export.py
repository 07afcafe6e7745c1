"""Export our weights back to the original's `infer.pt` layout, so a model trained here runs in the original code.

The inverse of convert.py's key table: peft's wrapped names (`.base_layer`, `lora_A.default.weight`), the
`(1, T, D)` sinusoid buffers, and the keys the original carries but never uses (docs/original.md §3d) filled with
neutral values: `ln_speech` ones/zeros, `speaker_head` zeros, `speech_token_emded` zeros except the bos/eos rows.
A `*_config.json` in the original's vocabulary is written next to the checkpoint, for `convert.py --config`.
"""
import json
import re
from pathlib import Path

import torch

from .model import OSUM, OSUMConfig
from .weights import WeightsError, load_weights

PEFT_PREFIX = "llama_model.base_model.model."


def _llm_key(ours: str, lora_targets: tuple, lora: bool) -> str:
    """Our LLM key (under `llm.`) -> the peft-wrapped Hugging Face key the original saves."""
    if ours == "lm_head.weight":
        hf = ours
    else:
        hf = "model." + ours
        match = re.fullmatch(r"(model\.layers\.\d+\.\w+\.(\w+))\.(weight|bias|lora_A|lora_B)", hf)
        if lora and match and match.group(2) in lora_targets:
            name = match.group(3)
            hf = f"{match.group(1)}.{name}.default.weight" if name.startswith("lora_") \
                else f"{match.group(1)}.base_layer.{name}"
    return (PEFT_PREFIX if lora else "llama_model.") + hf


def original_state_dict(model: OSUM) -> dict[str, torch.Tensor]:
    """Every tensor of `model` under the original's name, plus the original's unused keys."""
    import convert  # the key table lives with the converter (repository root)

    config = model.config
    llm_config = config.llm
    inverse = [(re.compile(re.escape(dst).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{p\}", r"(?P<p>weight|bias)")
                           + "$"), src) for src, dst in convert.KEY_TABLE if "{hf}" not in dst]
    state = {}
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach()
        if name.startswith("llm."):
            state[_llm_key(name[len("llm."):], llm_config.lora_targets, llm_config.lora_rank > 0)] = tensor
            continue
        for regex, src in inverse:
            match = regex.match(name)
            if match:
                break
        else:
            raise KeyError(f"{name}: not in convert.py's key table")
        key = src.format(**match.groupdict())
        if name.endswith("positional_embedding"):
            tensor = tensor[None]  # (T, D) -> (1, T, D)
        elif name == "speech_bos_eos":
            full = tensor.new_zeros(config.speech_token_num + 2, tensor.shape[1])  # (speech_token_num + 2, H)
            full[config.speech_token_num:] = tensor
            tensor = full
        state[key] = tensor
    prefix = PEFT_PREFIX if llm_config.lora_rank > 0 else "llama_model."
    state["embed_tokens.weight"] = state[prefix + "model.embed_tokens.weight"]
    state["lm_head.weight"] = state[prefix + "lm_head.weight"]
    dim, hidden, dtype = config.encoder.dim, llm_config.hidden_size, model.speech_bos_eos.dtype
    state["ln_speech.weight"], state["ln_speech.bias"] = torch.ones(dim, dtype=dtype), torch.zeros(dim, dtype=dtype)
    state["speaker_head.weight"] = torch.zeros(config.speech_token_num, hidden, dtype=dtype)
    state["speaker_head.bias"] = torch.zeros(config.speech_token_num, dtype=dtype)
    return state


def original_config(model: OSUM) -> dict:
    """Our config in the original's vocabulary (what convert.config_from_original reads)."""
    config, llm = model.config, model.config.llm
    return {
        "input_dim": config.encoder.n_mels,
        "encoder_conf": {"output_size": config.encoder.dim, "attention_heads": config.encoder.heads,
                         "linear_units": config.encoder.ff_dim, "num_blocks": config.encoder.layers},
        "speech_token_num": config.speech_token_num, "eod_id": config.eod_id, "use_lora": llm.lora_rank > 0,
        "lora_rank": llm.lora_rank or 8, "lora_alpha": llm.lora_alpha, "lora_dropout": llm.lora_dropout,
        "llm_config": {"model_type": "qwen2", "hidden_size": llm.hidden_size, "num_hidden_layers": llm.num_layers,
                       "num_attention_heads": llm.num_heads, "num_key_value_heads": llm.num_kv_heads,
                       "intermediate_size": llm.intermediate_size, "vocab_size": llm.vocab_size,
                       "rope_theta": llm.rope_theta, "rms_norm_eps": llm.rms_norm_eps,
                       "tie_word_embeddings": llm.tie_word_embeddings,
                       "max_position_embeddings": llm.max_position_embeddings},
    }


def export_original(our_dir, out_path) -> Path:
    """our_dir (config.json + safetensors) -> out_path (`torch.save` of the original's state dict)."""
    out_path = Path(out_path)
    config_path = Path(our_dir) / "config.json"
    if not config_path.is_file():
        raise WeightsError(f"{our_dir}: no config.json (not a directory convert.py or train.py wrote)")
    with torch.device("meta"):
        model = OSUM(OSUMConfig.from_dict(json.loads(config_path.read_text())))
    load_weights(model, our_dir, device="cpu")  # each tensor keeps its stored dtype
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_suffix(out_path.suffix + ".tmp")
    torch.save(original_state_dict(model), tmp)
    tmp.replace(out_path)
    config_path = out_path.with_name(out_path.stem + "_config.json")
    config_path.write_text(json.dumps(original_config(model), indent=1))
    return out_path
