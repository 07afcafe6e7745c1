"""Export our weights back to the original's `infer.pt` layout, so a model trained here runs in the original code.

original.py's key table read backwards: peft's wrapped names (`.base_layer`, `lora_A.default.weight`), the
`(1, T, D)` sinusoid buffers, and the keys the original carries but never uses (docs/original.md §3d) filled with
neutral values. A `*_config.json` in the original's vocabulary is written next to the checkpoint, for
`convert.py --config`.
"""

import json
from pathlib import Path

import torch

from ..model.osum import OSUM, OSUMConfig
from .original import original_config, original_state_dict
from ..files import atomic_write
from ..weights import WeightsError, load_weights


def export_original(our_dir, out_path) -> Path:
    """our_dir (config.json + safetensors) -> out_path (`torch.save` of the original's state dict)."""
    out_path = Path(out_path)
    config_path = Path(our_dir) / "config.json"
    if not config_path.is_file():
        raise WeightsError(
            f"{our_dir}: no config.json (not a directory convert.py or train.py wrote)"
        )
    with torch.device("meta"):
        model = OSUM(OSUMConfig.from_file(config_path))
    try:
        config = original_config(model.config)
    except ValueError as err:  # osum-mini's 25 Hz adaptor
        raise WeightsError(f"{our_dir}: not exportable: {err}") from None
    load_weights(model, our_dir, device="cpu")  # each tensor keeps its stored dtype
    out_path.parent.mkdir(parents=True, exist_ok=True)
    # a full disk, an interrupt: no partial file stays behind
    with atomic_write(out_path) as f:
        torch.save(original_state_dict(model), f)
    config_path = out_path.with_name(out_path.stem + "_config.json")
    config_path.write_text(json.dumps(config, indent=1))
    return out_path
