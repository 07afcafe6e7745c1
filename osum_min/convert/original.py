"""The original's checkpoint (`infer.pt`) and config: every key mapped to ours by one table, and back.

The original loads its checkpoint with strict=False; we map every source key through the explicit table below and
refuse (one line) a key that is neither mapped nor dropped on purpose, a model tensor left unfilled, or a shape that
disagrees with the config. The same table, read backwards, writes our model in the original's layout (export.py).
The released model's config ships with the package (`released_config.json`), in the original's vocabulary: the
training yaml's top-level keys and `encoder_conf`, plus the Qwen2 `config.json` under `llm_config`.
"""

import os
import pickle
import re
import struct
from pathlib import Path

import torch

from ..model.adaptor import AdaptorConfig
from ..config_check import ConfigError, build_section
from ..model.encoder import EncoderConfig
from ..model.osum import OSUM, OSUMConfig
from ..model.qwen2 import HF_CONFIG_NAMES, Qwen2Config, hf_key_to_ours
from ..text.tokenizer import EOD_ID
from ..files import FileError, open_file, read_json
from ..weights import WeightsError, describe_keys

RELEASED_CONFIG = Path(__file__).with_name("released_config.json")
PEFT_PREFIX = "llama_model.base_model.model."


class ConfigMismatch(WeightsError):
    """The checkpoint's tensors are not the ones the config describes (missing keys, other shapes)."""


# The original's names -> ours. {i} is a block index, {p} is "weight" or "bias".
BLOCK_TABLE = [
    ("encoders.{i}.self_attn.linear_q.{p}", "blocks.{i}.attn.query.{p}"),
    ("encoders.{i}.self_attn.linear_k.{p}", "blocks.{i}.attn.key.{p}"),
    ("encoders.{i}.self_attn.linear_v.{p}", "blocks.{i}.attn.value.{p}"),
    ("encoders.{i}.self_attn.linear_out.{p}", "blocks.{i}.attn.out.{p}"),
    ("encoders.{i}.norm1.{p}", "blocks.{i}.attn_ln.{p}"),
    ("encoders.{i}.feed_forward.w_1.{p}", "blocks.{i}.mlp.0.{p}"),
    ("encoders.{i}.feed_forward.w_2.{p}", "blocks.{i}.mlp.2.{p}"),
    ("encoders.{i}.norm2.{p}", "blocks.{i}.mlp_ln.{p}"),
    ("after_norm.{p}", "ln_post.{p}"),
]
KEY_TABLE = [
    ("encoder.embed.conv.0.{p}", "encoder.conv1.{p}"),
    ("encoder.embed.conv.2.{p}", "encoder.conv2.{p}"),
    # (1, 1500, D) -> (1500, D)
    (
        "encoder.embed.pos_enc.pe",
        "encoder.positional_embedding",
    ),
    *[("encoder." + src, "encoder." + dst) for src, dst in BLOCK_TABLE],
    ("down_sample_2.conv.1.{p}", "adaptor.downsample.convs.0.{p}"),
    ("down_sample_2.conv.4.{p}", "adaptor.downsample.convs.1.{p}"),
    ("down_sample_2.conv.7.{p}", "adaptor.downsample.convs.2.{p}"),
    ("speech_transformer.embed.out.0.{p}", "adaptor.input_proj.{p}"),
    ("speech_transformer.embed.out.1.{p}", "adaptor.input_ln.{p}"),
    # (1, 5000, D) -> (5000, D)
    (
        "speech_transformer.embed.pos_enc.pe",
        "adaptor.positional_embedding",
    ),
    *[("speech_transformer." + src, "adaptor." + dst) for src, dst in BLOCK_TABLE],
    ("speech_llama_proj.{p}", "adaptor.proj.{p}"),
    # rows speech_token_num + (0, 1) only
    (
        "speech_token_emded.weight",
        "speech_bos_eos",
    ),
    # Qwen2 (peft-wrapped): qwen2.hf_key_to_ours maps the rest
    (
        "llama_model.{hf}",
        "llm.{hf}",
    ),
]
# Keys in the original's checkpoint that carry nothing the model uses (docs/original.md §3d), dropped by name.
DROPPED = [
    ("ln_speech.{p}", "constructed but never called"),
    ("speaker_head.{p}", "unused speaker classifier"),
    ("embed_tokens.weight", "alias of llama_model...embed_tokens.weight"),
    ("lm_head.weight", "alias of llama_model...lm_head.weight"),
]


def _regex(pattern: str) -> re.Pattern:
    pattern = (
        re.escape(pattern)
        .replace(r"\{i\}", r"(?P<i>\d+)")
        .replace(r"\{p\}", r"(?P<p>weight|bias)")
    )
    return re.compile(pattern.replace(r"\{hf\}", r"(?P<hf>.+)") + "$")


COMPILED = [(_regex(src), dst) for src, dst in KEY_TABLE]
COMPILED_DROPPED = [(_regex(src), why) for src, why in DROPPED]
# ours -> the original's
INVERSE = [(_regex(dst), src) for src, dst in KEY_TABLE if "{hf}" not in dst]


def map_key(key: str) -> str | None:
    """Our name for an original key, or None when the table drops it on purpose. KeyError when unknown."""
    for regex, why in COMPILED_DROPPED:
        if regex.match(key):
            return None
    for regex, dst in COMPILED:
        match = regex.match(key)
        if not match:
            continue
        fields = match.groupdict()
        if "hf" in fields:
            ours = hf_key_to_ours(fields["hf"])
            if ours is None:
                raise KeyError(key)
            fields["hf"] = ours
        return dst.format(**fields)
    raise KeyError(key)


def _llm_key(ours: str, lora_targets: tuple, lora: bool) -> str:
    """Our LLM key (under `llm.`) -> the peft-wrapped Hugging Face key the original saves."""
    if ours == "lm_head.weight":
        hf = ours
    else:
        hf = "model." + ours
        match = re.fullmatch(
            r"(model\.layers\.\d+\.\w+\.(\w+))\.(weight|bias|lora_A|lora_B)", hf
        )
        if lora and match and match.group(2) in lora_targets:
            name = match.group(3)
            hf = (
                f"{match.group(1)}.{name}.default.weight"
                if name.startswith("lora_")
                else f"{match.group(1)}.base_layer.{name}"
            )
    return (PEFT_PREFIX if lora else "llama_model.") + hf


def original_key(name: str, config: OSUMConfig) -> str:
    """The original's key for one of our tensor names (map_key read backwards)."""
    if name.startswith("llm."):
        return _llm_key(
            name[len("llm.") :], config.llm.lora_targets, config.llm.lora_rank > 0
        )
    for regex, src in INVERSE:
        match = regex.match(name)
        if match:
            return src.format(**match.groupdict())
    raise KeyError(f"{name}: not in original.py's key table")


# The original's config: its yaml and Qwen2 names -> our dataclasses, and back. `adaptor_conf` is ours: the original
# hard-codes its adaptor (the AdaptorConfig defaults), our smaller presets need their sizes written down.
REQUIRED = {
    "encoder_conf": ("output_size", "attention_heads", "linear_units", "num_blocks"),
    "llm_config": (
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "intermediate_size",
        "vocab_size",
    ),
}


def _is_size(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


# Our config's dotted field names -> the original's, so that a refused value is named as its file spells it.
ORIGINAL_NAMES = {
    **{
        f"llm.{ours}": f"llm_config.{theirs}"
        for ours, theirs in HF_CONFIG_NAMES.items()
    },
    **{f"llm.{name}": name for name in ("lora_rank", "lora_alpha", "lora_dropout")},
    **{
        f"encoder.{ours}": f"encoder_conf.{theirs}"
        for ours, theirs in (
            ("dim", "output_size"),
            ("heads", "attention_heads"),
            ("ff_dim", "linear_units"),
            ("layers", "num_blocks"),
        )
    },
    **{
        f"adaptor.{ours}": f"adaptor_conf.{theirs}"
        for ours, theirs in (
            ("heads", "attention_heads"),
            ("ff_dim", "linear_units"),
            ("layers", "num_blocks"),
        )
    },
    "encoder.n_mels": "input_dim",
}


def config_from_original(original: dict) -> OSUMConfig:
    """Our dataclass configs from the original's vocabulary (yaml keys + encoder_conf + llm_config).

    ValueError (one line) for anything that is not such a config, e.g. `{}` or a list, or a value out of range
    (named as the original names it: llm_config.rms_norm_eps)."""
    if not isinstance(original, dict):
        raise ValueError(
            f"a JSON {type(original).__name__}, not an object with encoder_conf and llm_config"
        )
    for section, keys in REQUIRED.items():
        if not isinstance(original.get(section), dict):
            raise ValueError(
                f"no {section} object (an OSUM config in the original's vocabulary has "
                f"{' and '.join(REQUIRED)})"
            )
        absent = [key for key in keys if key not in original[section]]
        if absent:
            raise ValueError(f"{section} lacks {', '.join(absent)}")
        wrong = [key for key in keys if not _is_size(original[section][key])]
        if wrong:
            raise ValueError(
                f"{section}.{wrong[0]} is {original[section][wrong[0]]!r}, not a positive whole number"
            )
    enc, llm, adaptor = (
        original["encoder_conf"],
        original["llm_config"],
        original.get("adaptor_conf", {}),
    )
    use_lora, lora_rank = original.get("use_lora", True), original.get("lora_rank", 8)
    if not isinstance(use_lora, bool):
        raise ValueError(f"use_lora is {use_lora!r}, not true or false")
    if use_lora and lora_rank == 0 and not isinstance(lora_rank, bool):
        raise ValueError(
            f"lora_rank is {lora_rank!r} with use_lora true: LoRA needs a rank of at least 1"
        )
    defaults = AdaptorConfig()
    try:
        llm_config = build_section(
            "llm",
            Qwen2Config.from_hf,
            llm,
            lora_rank=lora_rank if use_lora else 0,
            lora_alpha=original.get("lora_alpha", 32),
            lora_dropout=original.get("lora_dropout", 0.1),
        )
        return OSUMConfig(
            encoder=build_section(
                "encoder",
                EncoderConfig,
                n_mels=original.get("input_dim", 80),
                dim=enc["output_size"],
                heads=enc["attention_heads"],
                ff_dim=enc["linear_units"],
                layers=enc["num_blocks"],
            ),
            adaptor=build_section(
                "adaptor",
                AdaptorConfig,
                dim=enc["output_size"],
                llm_dim=llm["hidden_size"],
                heads=adaptor.get("attention_heads", defaults.heads),
                ff_dim=adaptor.get("linear_units", defaults.ff_dim),
                layers=adaptor.get("num_blocks", defaults.layers),
            ),
            llm=llm_config,
            speech_token_num=original.get("speech_token_num", 4097),
            eod_id=original.get("eod_id", EOD_ID),
        )
    except ConfigError as err:
        raise ValueError(
            f"{ORIGINAL_NAMES.get(err.field, err.field)} is {err.value!r}, {err.requirement}"
        ) from None
    except (TypeError, AttributeError) as err:
        raise ValueError(f"a field of the wrong type ({err})") from None


def read_original_config(path) -> OSUMConfig:
    """A config file in the original's vocabulary -> our config; one line naming the file when it is not one."""
    try:
        data = read_json(path, "config file")
    except FileError as err:
        raise WeightsError(str(err)) from None
    try:
        return config_from_original(data)
    except ValueError as err:
        raise WeightsError(f"{path}: not an OSUM config: {err}") from None


def original_config(config: OSUMConfig) -> dict:
    """Our config in the original's vocabulary (what config_from_original reads); ValueError for
    an adaptor the original cannot build (its GxlConv1dSubsampling4 has strides (1, 2, 2))."""
    strides, built = tuple(config.adaptor.strides), AdaptorConfig().strides
    if strides != built:
        raise ValueError(
            f"the original's adaptor has strides {built}, this model's {strides}"
        )
    llm = config.llm
    return {
        "input_dim": config.encoder.n_mels,
        "encoder_conf": {
            "output_size": config.encoder.dim,
            "attention_heads": config.encoder.heads,
            "linear_units": config.encoder.ff_dim,
            "num_blocks": config.encoder.layers,
        },
        "adaptor_conf": {
            "attention_heads": config.adaptor.heads,
            "linear_units": config.adaptor.ff_dim,
            "num_blocks": config.adaptor.layers,
        },
        "speech_token_num": config.speech_token_num,
        "eod_id": config.eod_id,
        "use_lora": llm.lora_rank > 0,
        "lora_rank": llm.lora_rank or 8,
        "lora_alpha": llm.lora_alpha,
        "lora_dropout": llm.lora_dropout,
        "llm_config": {"model_type": "qwen2", **llm.to_hf()},
    }


def _is_safetensors(head: bytes) -> bool:
    """8-byte little-endian header length, then the JSON header's opening brace."""
    return (
        len(head) > 8 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] < 2**32
    )


def load_checkpoint(path: Path) -> dict:
    """The original's checkpoint as a state dict of tensors: torch.save's zip archive (memory-mapped) or its older
    pickle format, read with weights_only=True so nothing in the file can run code. One line for anything else."""
    try:
        with os.fdopen(open_file(path, "checkpoint file"), "rb") as f:
            head = f.read(16)
    except FileError as err:
        raise WeightsError(str(err)) from None
    if not head:
        raise WeightsError(f"{path}: an empty file (0 bytes), not a PyTorch checkpoint")
    if _is_safetensors(head):
        raise WeightsError(
            f"{path}: a safetensors file, not a PyTorch checkpoint (a directory convert.py wrote "
            "loads as it is)"
        )
    zipped = head.startswith(b"PK\x03\x04")
    # torch.save's older format starts with a pickle opcode
    if not zipped and not head.startswith(b"\x80"):
        raise WeightsError(
            f"{path}: not a PyTorch checkpoint (neither torch.save's zip archive nor its pickle)"
        )
    try:
        state = torch.load(path, map_location="cpu", mmap=zipped, weights_only=True)
    except pickle.UnpicklingError as err:
        found = [line for line in str(err).splitlines() if "GLOBAL" in line]
        reason = f": {found[0].strip().rstrip('.')}" if found else ""
        raise WeightsError(
            f"{path}: refused, it holds more than tensors and plain data{reason}"
        ) from None
    except Exception:  # noqa: BLE001  torch raises many types for truncated zips and pickles
        raise WeightsError(
            f"{path}: a damaged PyTorch checkpoint (its {'zip archive' if zipped else 'pickle'} "
            "cannot be read: truncated?)"
        ) from None
    if (
        isinstance(state, dict)
        and "module" in state
        and isinstance(state["module"], dict)
    ):
        state = state["module"]  # a DeepSpeed checkpoint dict
    if not isinstance(state, dict) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise WeightsError(f"{path}: not a state dict of tensors")
    return state


def convert_entries(source: dict, config: OSUMConfig, dtype: torch.dtype | None):
    """Check the whole mapping first, then return lazy (name, shape, dtype, produce) entries for save_weights."""
    with torch.device("meta"):
        expected = OSUM(config).state_dict()
    unknown, mapped = [], {}
    for key in source:
        try:
            ours = map_key(key)
        except KeyError:
            unknown.append(key)
            continue
        if ours is not None:
            if ours in mapped:
                raise WeightsError(f"{key} and {mapped[ours]} both map to {ours}")
            mapped[ours] = key
    if unknown:
        raise WeightsError(
            f"unexpected {describe_keys(unknown)} (not in original.py's key table)"
        )
    unused = [mapped[name] for name in mapped if name not in expected]
    if unused:  # e.g. LoRA adapters under use_lora false: dropping them would decode another model
        lora = all(".lora_" in key for key in unused)
        what = (
            "LoRA tensors, but the config has use_lora false or lora_rank 0"
            if lora
            else "tensors the config has no place for"
        )
        raise ConfigMismatch(f"{what}: {describe_keys(unused)}")
    missing = [name for name in expected if name not in mapped]
    if missing:
        raise ConfigMismatch(
            f"missing {describe_keys(missing)} (no source key maps to them)"
        )
    bos_row = config.speech_token_num

    def select(name: str, tensor: torch.Tensor) -> torch.Tensor:
        """The part of a source tensor our model keeps: a view, so taking it costs no memory."""
        if name.endswith("positional_embedding"):
            return tensor[0]  # (1, T, D) buffer -> (T, D)
        if name == "speech_bos_eos":
            return tensor[bos_row : bos_row + 2]  # the speech bos and eos rows only
        return tensor

    def produce(name, key):
        def make():
            tensor = select(name, source[key])
            return (
                tensor.to(dtype)
                if dtype is not None and tensor.is_floating_point()
                else tensor
            )

        return make

    entries = []
    for name, target in expected.items():
        key = mapped[name]
        shape = select(name, source[key]).shape
        if shape != target.shape:
            raise ConfigMismatch(
                f"{key}: shape {tuple(source[key].shape)} does not fit {name} "
                f"{tuple(target.shape)} from the config"
            )
        entries.append((name, shape, dtype or source[key].dtype, produce(name, key)))
    return entries


def original_state_dict(model: OSUM) -> dict[str, torch.Tensor]:
    """Every tensor of `model` under the original's name, plus the keys the original carries but never uses, filled
    with neutral values: `ln_speech` ones/zeros, `speaker_head` zeros, `speech_token_emded` zeros but bos/eos."""
    config = model.config
    state = {}
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach()
        if name.endswith("positional_embedding"):
            tensor = tensor[None]  # (T, D) -> (1, T, D)
        elif name == "speech_bos_eos":
            # (speech_token_num + 2, H)
            full = tensor.new_zeros(config.speech_token_num + 2, tensor.shape[1])
            full[config.speech_token_num :] = tensor
            tensor = full
        state[original_key(name, config)] = tensor
    prefix = PEFT_PREFIX if config.llm.lora_rank > 0 else "llama_model."
    state["embed_tokens.weight"] = state[prefix + "model.embed_tokens.weight"]
    state["lm_head.weight"] = state[prefix + "lm_head.weight"]
    dim, llm_dim, dtype = config.encoder.dim, config.llm.dim, model.speech_bos_eos.dtype
    state["ln_speech.weight"], state["ln_speech.bias"] = (
        torch.ones(dim, dtype=dtype),
        torch.zeros(dim, dtype=dtype),
    )
    state["speaker_head.weight"] = torch.zeros(
        config.speech_token_num, llm_dim, dtype=dtype
    )
    state["speaker_head.bias"] = torch.zeros(config.speech_token_num, dtype=dtype)
    return state
