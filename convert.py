"""Convert an OSUM checkpoint (the released infer.pt, or any the original code saves) into our format.

    python convert.py CKPT [--config OSUM_CONFIG.json] [--tokenizer DIR] [--dtype bf16|fp32|keep] --out DIR
    python convert.py --download [--hub-url URL]          # fetch the released model and convert into weights/osum
    python convert.py --to-original DIR --out infer.pt    # export ours back to the original's key layout

The original loads its checkpoint with strict=False; we map every source key through one explicit table below,
and refuse (one line, exit code 2) a key that is neither mapped nor dropped on purpose, a model tensor left
unfilled, or a shape that disagrees with the config. LoRA stays separate in the file; loading merges it.
"""
import argparse
import json
import re
import sys
from pathlib import Path

import torch

from osum_min.adaptor import AdaptorConfig
from osum_min.encoder import EncoderConfig
from osum_min.model import OSUM, OSUMConfig
from osum_min.progress import Progress
from osum_min.qwen2 import Qwen2Config, hf_key_to_ours
from osum_min.tokenizer import EOD_ID, Tokenizer
from osum_min.weights import WeightsError, describe_keys, save_weights

RELEASED_CONFIG = Path(__file__).parent / "tests" / "fixtures" / "released_config.json"

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
    ("encoder.embed.pos_enc.pe", "encoder.positional_embedding"),  # (1, 1500, D) -> (1500, D)
    *[("encoder." + src, "encoder." + dst) for src, dst in BLOCK_TABLE],
    ("down_sample_2.conv.1.{p}", "adaptor.downsample.convs.0.{p}"),
    ("down_sample_2.conv.4.{p}", "adaptor.downsample.convs.1.{p}"),
    ("down_sample_2.conv.7.{p}", "adaptor.downsample.convs.2.{p}"),
    ("speech_transformer.embed.out.0.{p}", "adaptor.input_proj.{p}"),
    ("speech_transformer.embed.out.1.{p}", "adaptor.input_ln.{p}"),
    ("speech_transformer.embed.pos_enc.pe", "adaptor.positional_embedding"),  # (1, 5000, D) -> (5000, D)
    *[("speech_transformer." + src, "adaptor." + dst) for src, dst in BLOCK_TABLE],
    ("speech_llama_proj.{p}", "adaptor.proj.{p}"),
    ("speech_token_emded.weight", "speech_bos_eos"),  # rows speech_token_num + (0, 1) only
    ("llama_model.{hf}", "llm.{hf}"),  # Qwen2 (peft-wrapped): qwen2.hf_key_to_ours maps the rest
]
# Keys in the original's checkpoint that carry nothing the model uses (docs/original.md §3d), dropped by name.
DROPPED = [
    ("ln_speech.{p}", "constructed but never called"),
    ("speaker_head.{p}", "unused speaker classifier"),
    ("embed_tokens.weight", "alias of llama_model...embed_tokens.weight"),
    ("lm_head.weight", "alias of llama_model...lm_head.weight"),
]


def _regex(pattern: str) -> re.Pattern:
    pattern = re.escape(pattern).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{p\}", r"(?P<p>weight|bias)")
    return re.compile(pattern.replace(r"\{hf\}", r"(?P<hf>.+)") + "$")


COMPILED = [(_regex(src), dst) for src, dst in KEY_TABLE]
COMPILED_DROPPED = [(_regex(src), why) for src, why in DROPPED]


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


def config_from_original(original: dict) -> OSUMConfig:
    """Our dataclass configs from the original's vocabulary (yaml keys + encoder_conf + llm_config)."""
    enc, llm = original["encoder_conf"], original["llm_config"]
    llm_config = Qwen2Config.from_hf(llm, lora_rank=original.get("lora_rank", 8) if original.get("use_lora", True)
                                     else 0, lora_alpha=original.get("lora_alpha", 32),
                                     lora_dropout=original.get("lora_dropout", 0.1))
    return OSUMConfig(
        encoder=EncoderConfig(n_mels=original.get("input_dim", 80), dim=enc["output_size"],
                              heads=enc["attention_heads"], ff_dim=enc["linear_units"], layers=enc["num_blocks"]),
        adaptor=AdaptorConfig(dim=enc["output_size"], llm_dim=llm["hidden_size"]),
        llm=llm_config, speech_token_num=original.get("speech_token_num", 4097),
        eod_id=original.get("eod_id", EOD_ID))


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
        raise WeightsError(f"unexpected {describe_keys(unknown)} (not in convert.py's key table)")
    missing = [name for name in expected if name not in mapped]
    if missing:
        raise WeightsError(f"missing {describe_keys(missing)} (no source key maps to them)")
    bos_row = config.speech_token_num

    def select(name: str, tensor: torch.Tensor) -> torch.Tensor:
        """The part of a source tensor our model keeps: a view, so taking it costs no memory."""
        if name.endswith("positional_embedding"):
            return tensor[0]  # (1, T, D) buffer -> (T, D)
        if name == "speech_bos_eos":
            return tensor[bos_row: bos_row + 2]  # the speech bos and eos rows only
        return tensor

    def produce(name, key):
        def make():
            tensor = select(name, source[key])
            return tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor
        return make

    entries = []
    for name, target in expected.items():
        key = mapped[name]
        shape = select(name, source[key]).shape
        if shape != target.shape:
            raise WeightsError(f"{key}: shape {tuple(source[key].shape)} does not fit {name} "
                               f"{tuple(target.shape)} from the config")
        entries.append((name, shape, dtype or source[key].dtype, produce(name, key)))
    return entries


def load_checkpoint(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as err:  # torch raises many types for truncated zips, pickles and foreign files
        raise WeightsError(f"{path}: not a readable PyTorch checkpoint ({str(err).splitlines()[0][:120]})") from None
    if isinstance(state, dict) and "module" in state and isinstance(state["module"], dict):
        state = state["module"]  # a DeepSpeed checkpoint dict
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path}: not a state dict of tensors")
    return state


def convert(checkpoint: Path, out: Path, original_config: dict, dtype: torch.dtype | None,
            tokenizer_dir: Path | None = None) -> OSUMConfig:
    config = config_from_original(original_config)
    source = load_checkpoint(checkpoint)
    try:
        entries = convert_entries(source, config, dtype)
    except WeightsError as err:
        raise WeightsError(f"{checkpoint}: {err}") from None
    total = sum(shape.numel() * dt.itemsize for _, shape, dt, _ in entries)
    with Progress(total, "converting", unit="B") as bar:
        save_weights(out, entries, progress=bar)
    (out / "config.json").write_text(json.dumps(config.to_dict(), indent=1))
    if tokenizer_dir is not None:
        Tokenizer.from_pretrained(tokenizer_dir).save(out / "tokenizer.tiktoken")
    return config


DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16, "keep": None}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", nargs="?", type=Path, help="the original's infer.pt (a plain state dict)")
    parser.add_argument("--config", type=Path, default=RELEASED_CONFIG,
                        help="model config in the original's vocabulary (default: the released model's)")
    parser.add_argument("--tokenizer", type=Path, help="a Qwen2 tokenizer directory to convert alongside")
    parser.add_argument("--dtype", choices=DTYPES, default="keep")
    parser.add_argument("--out", type=Path, help="output directory (default weights/osum)")
    parser.add_argument("--download", action="store_true", help="fetch the released model first (needs internet)")
    parser.add_argument("--hub-url", help="hub base URL (default $OSUM_HUB_URL or https://huggingface.co)")
    parser.add_argument("--download-dir", type=Path, default=Path("weights/download"),
                        help="where --download keeps the original files (partial files resume from here)")
    parser.add_argument("--to-original", type=Path, metavar="DIR", help="export our DIR to the original's layout")
    args = parser.parse_args(argv)
    try:
        if args.to_original:
            from osum_min.export import export_original
            export_original(args.to_original, args.out or Path("infer.pt"))
            return 0
        out = args.out or Path("weights/osum")
        if args.download:
            from osum_min.hub import fetch_release
            args.checkpoint, args.tokenizer = fetch_release(args.download_dir, base_url=args.hub_url)
        if args.checkpoint is None:
            parser.error("give a checkpoint, --download or --to-original")
        if not args.checkpoint.is_file():
            raise WeightsError(f"{args.checkpoint}: no such file")
        convert(args.checkpoint, out, json.loads(args.config.read_text()), DTYPES[args.dtype], args.tokenizer)
    except (ValueError, OSError) as err:
        print(f"convert.py: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
