"""Training memory options: bf16 frozen weights with float32 trainable ones, activation checkpointing, the memory
table and the peak in the log."""

import copy
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

import train
from osum_min.model.osum import OSUM, OSUM_PRESETS
from osum_min.training.steps import make_optimizer, setup_model, trainable_table
from test_train import corpus, log_records, run_args  # noqa: F401 (corpus is a fixture)


def tiny_model(lora_dropout: float = 0.1) -> OSUM:
    config = OSUM_PRESETS["tiny"]
    torch.manual_seed(0)
    model = OSUM(replace(config, llm=replace(config.llm, lora_dropout=lora_dropout)))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("lora_B"):
                # nonzero, so LoRA shapes the loss and A gets gradient
                parameter.normal_(0, 0.05)
    return model


def batch():
    generator = torch.Generator().manual_seed(1)
    mel_lens = torch.tensor([300, 251])
    mel = torch.randn(2, 300, 80, generator=generator)
    mel[1, 251:] = 0
    prompt_ids = [[5, 6, 7, 8], [9, 10]]
    labels = [[11, 12, 13, 1000], [14, 15, 1000]]
    return mel, mel_lens, prompt_ids, labels


def test_frozen_weights_are_bf16_and_trainable_ones_float32():
    model = tiny_model()
    trainable = setup_model(model, "link_and_encoder_and_lora", torch.bfloat16)
    dtypes = {name: parameter.dtype for name, parameter in model.named_parameters()}
    assert {dtypes[name] for name in trainable} == {torch.float32}
    frozen = set(dtypes) - set(trainable)
    assert frozen and {dtypes[name] for name in frozen} == {torch.bfloat16}
    # the base LLM
    assert any(name.startswith("llm.layers.0.mlp.up_proj") for name in frozen)
    optimizer, _ = make_optimizer(model, 1e-3, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model.loss(*batch()).backward()
    optimizer.step()
    moments = [state["exp_avg_sq"] for state in optimizer.state.values()]
    assert len(moments) == len(trainable) and {moment.dtype for moment in moments} == {
        torch.float32
    }


def test_bf16_frozen_loss_is_close_to_float32():
    """On the tiny model: frozen weights in bf16 under bf16 autocast vs every weight float32 without autocast."""
    full = tiny_model(lora_dropout=0.0)
    half = copy.deepcopy(full)
    setup_model(full, "link_and_encoder_and_lora", torch.float32)
    setup_model(half, "link_and_encoder_and_lora", torch.bfloat16)
    reference = full.loss(*batch()).item()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = half.loss(*batch()).item()
    assert loss == pytest.approx(reference, rel=2e-2) and loss != reference


def test_grad_checkpoint_gives_the_same_gradients():
    """float32, LoRA dropout on: recomputing each block in backward (which does happen: the first LLM layer's MLP
    runs twice) gives the plain run's gradients."""
    plain = tiny_model()
    checkpointed = copy.deepcopy(plain)
    trainable = setup_model(plain, "all")
    setup_model(checkpointed, "all", grad_checkpoint=True)
    calls = []
    checkpointed.llm.layers[0].mlp.register_forward_pre_hook(lambda *_: calls.append(1))
    for model in (plain, checkpointed):
        torch.manual_seed(3)
        model.loss(*batch()).backward()
    assert len(calls) == 2
    for name in trainable:
        first, second = (
            plain.get_parameter(name).grad,
            checkpointed.get_parameter(name).grad,
        )
        torch.testing.assert_close(second, first, rtol=1e-5, atol=1e-7, msg=name)
    assert any(
        bool(plain.get_parameter(name).grad.any())
        for name in trainable
        if "lora_A" in name
    )


def test_memory_table_counts_bytes_per_module():
    model = tiny_model()
    trainable = setup_model(model, "link_and_lora", torch.bfloat16)
    rows = {
        line[:16].strip(): line[16:].split()
        for line in trainable_table(model).splitlines()[1:]
    }
    llm = sum(
        p.numel()
        for name, p in model.named_parameters()
        if name.startswith("llm.") and ".lora_" not in name
    )
    # bf16: 2 bytes, nothing trains
    assert rows["llm"][:3] == [
        f"{0:,}",
        f"{llm:,}",
        f"{llm * 2 / 2**20:,.1f}",
    ]
    encoder = sum(p.numel() for p in model.encoder.parameters())
    assert rows["encoder"][2] == f"{encoder * 2 / 2**20:,.1f}" and rows["encoder"][
        3:
    ] == [
        "0.0",
        "0.0",
    ]
    trained = sum(model.get_parameter(name).numel() for name in trainable)
    # 2 fp32 moments
    assert (
        rows["all"][0] == f"{trained:,}"
        and rows["all"][4] == f"{trained * 8 / 2**20:,.1f}"
    )


def test_bf16_frozen_run_checkpoints_resumes_and_loads(corpus, tmp_path):  # noqa: F811
    """train.py --frozen-dtype bf16 --grad-checkpoint on CPU: float32 trained tensors and optimizer state in the
    checkpoint, a resume continues the run exactly, OUT/final loads, and the log carries the peak memory."""
    common = [
        "--preset",
        "tiny",
        "--frozen-dtype",
        "bf16",
        "--grad-checkpoint",
        "--save-every",
        "2",
    ]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert train.main(run_args(corpus, straight, *common, "--max-steps", "4")) == 0
    assert train.main(run_args(corpus, resumed, *common, "--max-steps", "2")) == 0
    assert (
        train.main(run_args(corpus, resumed, *common, "--max-steps", "4", "--resume"))
        == 0
    )
    assert [r["loss"] for r in log_records(resumed)] == [
        r["loss"] for r in log_records(straight)
    ]
    state = torch.load(straight / "step_00000004.pt", weights_only=True)
    lora = "llm.layers.0.self_attn.q_proj.lora_A"
    assert (
        state["model"][lora].dtype
        == state["optimizer"]["state"][lora]["exp_avg"].dtype
        == torch.float32
    )
    assert "llm.layers.0.mlp.up_proj.weight" not in state["model"]
    final = load_file(straight / "final" / "model.safetensors")
    assert (
        final["llm.layers.0.mlp.up_proj.weight"].dtype == torch.bfloat16
        and final[lora].dtype == torch.float32
    )
    model = OSUM.from_pretrained(straight / "final", device="cpu", for_training=True)
    assert torch.equal(model.get_parameter(lora), final[lora])
    assert all(record["peak_memory_gib"] > 0 for record in log_records(straight))


def test_frozen_dtype_defaults_by_device(corpus, tmp_path, monkeypatch):  # noqa: F811
    args = run_args(corpus, tmp_path, "--preset", "tiny")
    assert train.parse_args(args + ["--device", "cpu"]).frozen_dtype == "fp32"
    # --device cuda is checked against the machine
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    cuda = train.parse_args(args + ["--device", "cuda"])
    assert (cuda.frozen_dtype, cuda.bf16) == ("bf16", True)
    with pytest.raises(SystemExit):
        train.parse_args(args + ["--frozen-dtype", "bf16", "--no-bf16"])
