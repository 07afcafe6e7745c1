"""Encoder and adaptor against fixture_a (the original's own outputs), number for number.

Tolerance: 1e-4 max-abs, the fixture README's suggestion for float32 (we observe about 1e-6).
"""

import math
from dataclasses import replace

import pytest
import torch

from osum_min.config_check import ConfigError
from osum_min.model.adaptor import Adaptor, AdaptorConfig, interleaved_sinusoids
from osum_min.model.encoder import WhisperEncoder, whisper_sinusoids
from osum_min.model.osum import OSUM, OSUM_PRESETS, OSUMConfig

ATOL = 1e-4


@pytest.fixture(scope="module")
def model(fixture_weights) -> OSUM:
    return OSUM.from_pretrained(fixture_weights, device="cpu")


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def test_positional_tables_equal_the_checkpoint_buffers():
    state = torch.load("tests/fixtures/fixture_a/infer.pt", weights_only=True)
    assert (
        max_diff(whisper_sinusoids(1500, 64), state["encoder.embed.pos_enc.pe"][0])
        < 1e-6
    )
    # float32 rounding of large angles (sin of ~400 rad) costs ~1e-5; 30 s of audio reaches row 375
    assert (
        max_diff(
            interleaved_sinusoids(400, 64),
            state["speech_transformer.embed.pos_enc.pe"][0, :400],
        )
        < 5e-5
    )


@torch.no_grad()
def test_single_item_intermediates(model, expected):
    feats = expected["feats"][None]
    encoder_out, lengths = model.encoder(feats, torch.tensor([276]))
    assert lengths.tolist() == [int(expected["encoder_mask"].sum())] == [138]
    assert max_diff(encoder_out[0], expected["encoder_out"]) < ATOL
    down = model.adaptor.downsample(encoder_out)
    down_lens = model.adaptor.config.output_length(lengths)
    assert (
        down_lens.tolist()
        == [int(expected["down_sample_2_mask"].sum())]
        == [down.shape[1]]
    )
    assert max_diff(down[0], expected["down_sample_2_out"]) < ATOL
    transformed, _ = model.adaptor.transform(encoder_out, lengths)
    assert max_diff(transformed[0], expected["speech_transformer_out"]) < ATOL
    speech_embeds, speech_lens = model.embed_speech(feats, torch.tensor([276]))
    assert speech_lens.tolist() == [35]
    assert max_diff(speech_embeds[0], expected["speech_embeds"]) < ATOL


@torch.no_grad()
def test_batch_reproduces_the_original_mask_rule(model, expected):
    """The original drops the last frame of the odd-length item (219) in an even-length (276) batch."""
    speech_embeds, speech_lens = model.embed_speech(
        expected["batch_feats"], expected["batch_feats_lengths"]
    )
    assert (
        speech_lens.tolist()
        == expected["batch_speech_mask"].sum(1).tolist()
        == [35, 28]
    )
    for row, n in enumerate(speech_lens.tolist()):
        assert (
            max_diff(speech_embeds[row, :n], expected["batch_speech_embeds"][row, :n])
            < ATOL
        )
    # the quirk is real: with the rule, item 1 differs from item 1 alone by ~2.5e-3
    assert (
        max_diff(speech_embeds[1, :28], expected["batch_item1_alone_speech_embeds"])
        > 1e-3
    )


@torch.no_grad()
def test_batch_without_the_rule_equals_each_item_alone(model, expected):
    speech_embeds, speech_lens = model.embed_speech(
        expected["batch_feats"],
        expected["batch_feats_lengths"],
        original_mask_rule=False,
    )
    assert (
        max_diff(speech_embeds[0, :35], expected["batch_item0_alone_speech_embeds"])
        < ATOL
    )
    assert (
        max_diff(speech_embeds[1, :28], expected["batch_item1_alone_speech_embeds"])
        < ATOL
    )
    alone, _ = model.embed_speech(
        expected["batch_feats"][1:, :219], torch.tensor([219])
    )
    assert max_diff(speech_embeds[1, :28], alone[0]) < 1e-5


def test_too_long_input_is_refused_with_a_clear_error(model):
    with pytest.raises(ValueError, match="30 s"):
        model.encoder(torch.zeros(1, 3002, 80), torch.tensor([3002]))


def test_modules_run_in_bf16(model, expected):
    encoder = WhisperEncoder(model.config.encoder).to(torch.bfloat16)
    encoder.load_state_dict(model.encoder.state_dict())
    adaptor = Adaptor(model.config.adaptor).to(torch.bfloat16)
    adaptor.load_state_dict(model.adaptor.state_dict())
    with torch.no_grad():
        x, lengths = encoder(expected["feats"][None].bfloat16(), torch.tensor([276]))
        speech_embeds, _ = adaptor(x, lengths)
    assert speech_embeds.dtype == torch.bfloat16
    # bf16 keeps ~3 significant digits; a broken norm or cast would be off by far more
    scale = expected["speech_embeds"].abs().max().item()
    assert max_diff(speech_embeds[0], expected["speech_embeds"]) < 0.05 * scale


@pytest.mark.parametrize("strides", [(1, 2, 2), (1, 2, 2, 2), (3,)])
@torch.no_grad()
def test_speech_positions_are_what_the_adaptor_gives(strides):
    """OSUMConfig.speech_positions asks the encoder's and the adaptor's strides: for many lengths it is the number
    of embeddings the model really makes, plus bos and eos, and another adaptor stride changes it."""
    torch.manual_seed(0)
    preset = OSUM_PRESETS["tiny"]
    config = replace(preset, adaptor=replace(preset.adaptor, strides=strides))
    model = OSUM(config).eval()
    frames = [1, 2, 3, 7, 8, 9, 15, 16, 17, 100, 255, 256, 257, 1001]
    mel = torch.randn(1, max(frames), 80)
    for length in frames:
        embeds, lengths = model.embed_speech(
            mel[:, :length], torch.tensor([length]), False
        )
        assert embeds.shape[1] == lengths.item() == config.speech_positions(length) - 2
    stride = math.prod(strides) * 2  # the encoder's conv2 halves first
    assert config.speech_positions(3000) == -(-3000 // stride) + 2
    # for a 10-token answer
    room = config.llm.max_positions - config.speech_positions(3000) - 10
    assert config.prompt_length_problem(room, 10) is None
    assert config.prompt_length_problem(room + 1, 10) is not None


def test_a_stride_that_is_not_a_whole_number_is_refused():
    with pytest.raises(ConfigError, match="strides"):
        AdaptorConfig(strides=(2, 0))
    config = OSUM_PRESETS["tiny"].to_dict()
    assert config["adaptor"]["strides"] == (1, 2, 2)
    config["adaptor"]["strides"] = [2, 2]  # as JSON gives it back
    assert OSUMConfig.from_dict(config).adaptor.strides == (2, 2)
    config["adaptor"]["strides"] = "22"
    with pytest.raises(ConfigError, match="adaptor.strides is '22'"):
        OSUMConfig.from_dict(config)
