"""int8 weight-only inference (osum_min/model/quantize.py): what each layer computes, fidelity on fixture_a and on real
Qwen2.5 weights (opt-in), resident size, infer.py --quantize int8, and torch.compile."""

import copy
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import infer
from conftest import FIXTURE_A
from hf_qwen2 import TINY
from osum_min.model.osum import OSUM
from osum_min.model.quantize import Int8Linear, linear_weight_bytes, quantize_int8
from osum_min.model.qwen2 import LoRALinear, Qwen2, Qwen2Config, hf_key_to_ours
from osum_min.weights import load_state_dict_strict

ROOT = Path(__file__).resolve().parents[1]
ASSETS = Path(__file__).parent / ".assets"
GREEDY_16 = [
    "--prompt-ids",
    "17,230,511,42,901,7,333",
    "--ids",
    "--beams",
    "1",
    "--repetition-penalty",
    "1.0",
    "--max-new-tokens",
    "16",
]


@pytest.fixture(scope="module")
def models(fixture_weights):
    return (
        OSUM.from_pretrained(fixture_weights, device="cpu"),
        OSUM.from_pretrained(fixture_weights, device="cpu", quantize="int8"),
    )


@torch.no_grad()
@pytest.mark.parametrize("rows", [1, 20, 300])
@pytest.mark.parametrize("shape", [(40, 96), (300, 1024)])
def test_int8_linear_is_the_rounded_weight_times_its_scale(rows, shape):
    """The weight: round to nearest per row. The product: on the CPU each row of activations is quantised to
    8 bits (fbgemm), so it equals the dequantised float product to within ~1 % of its size."""
    torch.manual_seed(rows)
    layer = torch.nn.Linear(shape[1], shape[0])
    quantized = Int8Linear.from_linear(layer)
    weight_int8 = quantized.int8_weight()
    assert weight_int8.dtype == torch.int8 and quantized.scale.shape == shape[:1]
    # each row's largest weight maps to +-127
    assert weight_int8.abs().amax(dim=1).eq(127).all()
    error = (quantized.dequantized_weight() - layer.weight).abs()
    # round to nearest (+ float32 rounding)
    assert (error <= quantized.scale[:, None] * (0.5 + 1e-4)).all()
    x = torch.randn(rows, shape[1])
    expected = F.linear(x, quantized.dequantized_weight(), layer.bias)
    size = expected.abs().amax()
    assert (quantized(x) - expected).abs().max() < 0.02 * size
    assert (quantized(x.bfloat16()).float() - expected).abs().max() < 0.04 * size


@torch.no_grad()
def test_each_row_is_computed_as_alone_an_outlier_included():
    torch.manual_seed(0)
    quantized = Int8Linear.from_linear(torch.nn.Linear(256, 64))
    x = torch.randn(9, 256)
    x[-1] *= 1000  # a massive activation beside the others
    together = quantized(x)
    alone = torch.cat([quantized(row[None]) for row in x])
    assert torch.equal(together, alone)
    expected = F.linear(x, quantized.dequantized_weight(), quantized.bias)
    assert ((together - expected).abs().amax(-1) < 0.02 * expected.abs().amax(-1)).all()


@torch.no_grad()
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_an_all_zero_row_quantises_to_zero(dtype):
    layer = torch.nn.Linear(8, 3, bias=False).to(dtype)
    layer.weight[1] = 0
    quantized = Int8Linear.from_linear(layer)
    assert quantized.scale.dtype == dtype and quantized.int8_weight()[1].eq(0).all()
    assert quantized.dequantized_weight().isfinite().all()


@torch.no_grad()
def test_lora_is_merged_before_quantising():
    torch.manual_seed(0)
    layer = LoRALinear(64, 32, bias=True, rank=4, alpha=8.0, dropout=0.0).eval()
    torch.nn.init.normal_(layer.lora_B, std=0.5)
    x = torch.randn(5, 64)
    with_adapter = layer(x)
    quantized = Int8Linear.from_linear(layer)
    without = F.linear(x, layer.weight - layer._delta(), layer.bias)
    assert (with_adapter - quantized(x)).abs().max() * 5 < (
        with_adapter - without
    ).abs().max()
    merged_error = (
        quantized.dequantized_weight() - (layer.weight + layer._delta())
    ).abs()
    assert (merged_error <= quantized.scale[:, None] * (0.5 + 1e-4)).all()


@torch.no_grad()
def test_fixture_a_prefill_logits_within_bound(models, expected):
    """Measured on fixture_a (44 positions): max |logit difference| 0.048 (logits' std 0.79), mean KL 6e-5
    nats/position, top-1 agreement 42/44 (the two others are near-ties of its random-like weights)."""
    plain, quantized = models
    embeds = expected["generate_inputs_embeds"][None]
    # (L, V)
    reference, logits = (
        plain.llm(inputs_embeds=embeds)[0],
        quantized.llm(inputs_embeds=embeds)[0],
    )
    difference = (logits - reference).abs().max().item()
    assert difference < 0.1
    kl = F.kl_div(
        logits.log_softmax(-1),
        reference.log_softmax(-1),
        log_target=True,
        reduction="none",
    ).sum(-1)
    assert kl.mean() < 5e-4
    # top-1 can only change where float's lead over its runner-up is within 2x the largest logit difference
    top2 = reference.topk(2, dim=-1).values
    clear = top2[:, 0] - top2[:, 1] > 2 * difference
    same_top1 = logits.argmax(-1) == reference.argmax(-1)
    assert clear.sum() >= 15 and same_top1[clear].all()  # 24 clear positions measured
    assert same_top1.float().mean() >= 0.9


def test_every_llm_linear_is_int8_at_under_30_percent_of_float32(models):
    plain, quantized = models
    linears = [
        m
        for m in quantized.llm.modules()
        if isinstance(m, (torch.nn.Linear, Int8Linear))
    ]
    assert linears and all(isinstance(m, Int8Linear) for m in linears)
    # q k v o gate up down per layer, lm_head
    assert len(linears) == 7 * quantized.config.llm.layers + 1
    # use_input_major_weights leaves int8 alone
    assert all(m.int8_weight().is_contiguous() for m in linears)
    # the encoder stays float
    assert isinstance(quantized.encoder.blocks[0].mlp[0], torch.nn.Linear)
    ratio = linear_weight_bytes(quantized.llm) / linear_weight_bytes(plain.llm)
    assert ratio <= 0.30, ratio


def test_quantize_rejects_what_it_cannot_do(fixture_weights, models, tmp_path):
    with pytest.raises(ValueError, match="int8-quantised model is not saved"):
        models[1].save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="only quantisation is 'int8'"):
        OSUM.from_pretrained(fixture_weights, device="cpu", quantize="int4")
    # not int8 under another name
    with pytest.raises(ValueError, match="only quantisation is 'int8'"):
        OSUM.from_pretrained(
            fixture_weights, device="cpu", for_training=True
        ).prepare_for_inference("cpu", None, "int4")
    with pytest.raises(ValueError, match="for inference: not with for_training=True"):
        OSUM.from_pretrained(
            fixture_weights, device="cpu", quantize="int8", for_training=True
        )


def test_infer_cli_quantize_int8_equals_the_quantised_model(
    capsys, fixture_weights, models, expected
):
    code = infer.main(
        [
            str(FIXTURE_A / "audio.wav"),
            "--weights",
            str(fixture_weights),
            *GREEDY_16,
            "--quantize",
            "int8",
        ]
    )
    lines = capsys.readouterr().out.splitlines()
    assert code == 0 and len(lines) == 1
    ids = [int(token) for token in lines[0].split()]
    feats = expected["feats"]
    prompt = [int(token) for token in GREEDY_16[1].split(",")]
    direct = models[1].generate(
        feats[None],
        torch.tensor([feats.shape[0]]),
        [prompt],
        num_beams=1,
        repetition_penalty=1.0,
        max_new_tokens=16,
    )[0]
    assert ids == direct and len(ids) == 16


@pytest.mark.skipif(
    shutil.which("g++") is None, reason="torch.compile on CPU needs a C++ compiler"
)
def test_torch_compile_equals_the_dequantised_product():
    """Compiled, the layer takes the F.linear(x, int8.to(dtype)) * scale form (what inductor fuses on CUDA):
    float activations, where eager CPU quantises them (fbgemm)."""
    torch.manual_seed(0)
    layer = Int8Linear.from_linear(torch.nn.Linear(64, 48))
    x = torch.randn(2, 3, 64)
    with torch.inference_mode():
        expected = F.linear(x, layer.dequantized_weight(), layer.bias)
        compiled = torch.compile(layer, dynamic=False)(x)
        torch.testing.assert_close(compiled, expected, rtol=1e-5, atol=1e-5)
        assert (layer(x) - expected).abs().max() < 0.02 * expected.abs().max()


@torch.no_grad()
def test_quantize_int8_of_a_tied_qwen2_keeps_float_embeddings():
    cfg = Qwen2Config(**{**TINY.__dict__, "tie_embeddings": True})
    model = Qwen2(cfg).eval()
    ids = torch.randint(0, cfg.vocab_size, (1, 9))
    reference = model(input_ids=ids)
    quantize_int8(model)
    assert (
        isinstance(model.lm_head, Int8Linear)
        and model.embed_tokens.weight.dtype == torch.float32
    )
    assert (model(input_ids=ids) - reference).abs().max() < 0.05 * reference.abs().max()


@torch.no_grad()
def test_real_qwen25_gguf_teacher_forced_agreement():
    """Qwen2.5-0.5B (the GGUF the other opt-in tests use, dequantised to float32) over README.md, teacher-forced:
    int8's top-1 agrees with float32's on >= 91 % of positions, mean KL per token < 0.02. Measured over the
    first 4,096 tokens: 92.7 % and 0.0129 nats with 8-bit activations per token (fbgemm, the CPU path); the
    weight-only int8 before it gave 97.6-97.8 % and 0.0019-0.0020 (docs/performance.md: the price of speed)."""
    if os.environ.get("OSUM_TEST_GGUF") != "1":
        pytest.skip(
            "opt-in: set OSUM_TEST_GGUF=1 to download ~478 MB of real Qwen2.5-0.5B GGUF weights"
        )
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("gguf")
    sys.path.insert(0, str(ROOT / "examples"))
    from qwen_from_gguf import GGUF_NAME, gguf_file

    path = gguf_file(ASSETS)
    tokenizer = transformers.AutoTokenizer.from_pretrained(
        path.parent, gguf_file=path.name
    )
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    )
    model = Qwen2(Qwen2Config.from_hf(hf.config.to_dict()))
    load_state_dict_strict(
        model,
        {hf_key_to_ours(k): v for k, v in hf.state_dict().items() if hf_key_to_ours(k)},
        GGUF_NAME,
    ).eval()
    del hf
    quantized = quantize_int8(copy.deepcopy(model))
    ids = tokenizer((ROOT / "README.md").read_text(), return_tensors="pt").input_ids[
        :, :4096
    ]
    agree, kl, count = 0, 0.0, 0
    for window in ids.split(1024, dim=1):  # teacher-forced, 1024 tokens at a time
        reference = model(input_ids=window)[0].log_softmax(-1)  # (L, V)
        logp = quantized(input_ids=window)[0].log_softmax(-1)
        agree += (logp.argmax(-1) == reference.argmax(-1)).sum().item()
        kl += F.kl_div(logp, reference, log_target=True, reduction="sum").item()
        count += window.shape[1]
    print(
        f"int8 vs float32 over {count} README tokens: top-1 agreement {agree / count:.4f}, "
        f"mean KL {kl / count:.5f} nats/token"
    )
    assert count >= 2000
    assert agree / count >= 0.91
    assert kl / count < 0.02
