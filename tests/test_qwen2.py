"""Our Qwen2 (+ LoRA, static KV cache, checkpoint loading) against transformers' Qwen2ForCausalLM + peft."""

import json
import os
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hf_qwen2 import TINY, hf_config, peft_twin
from osum_min.model.generate import CachedDecoder
from osum_min.model.kv_cache import bucket
from osum_min.model.qwen2 import (
    LLM_PRESETS,
    LoRALinear,
    Qwen2,
    Qwen2Config,
    hf_key_to_ours,
    load_hf_checkpoint,
)
from osum_min.weights import WeightsError, load_state_dict_strict

FIXTURE = Path(__file__).parent / "fixtures" / "fixture_a"
ASSETS = Path(__file__).parent / ".assets"
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from qwen_from_gguf import GGUF_NAME, gguf_file  # noqa: E402  (the training recipe's fetch, shared)


def fixture_llm() -> Qwen2:
    """fixture_a's LLM: `llama_model.*` keys of infer.pt, config from osum_config.json plus OSUM's LoRA."""
    state = torch.load(FIXTURE / "infer.pt", map_location="cpu", weights_only=True)
    ours = {
        hf_key_to_ours(k.removeprefix("llama_model.")): v
        for k, v in state.items()
        if k.startswith("llama_model.")
    }
    llm_config = json.loads((FIXTURE / "osum_config.json").read_text())["llm_config"]
    cfg = Qwen2Config.from_hf(
        llm_config, lora_rank=8, lora_alpha=32.0, lora_dropout=0.1
    )
    return load_state_dict_strict(Qwen2(cfg), ours, "fixture_a/infer.pt").eval()


def padded_batch(B=2, L=12, vocab=TINY.vocab_size):
    """Ids, a 0/1 mask with left padding (row 1) and padding in the middle (row 0), and OSUM's position ids."""
    ids = torch.randint(0, vocab, (B, L), generator=torch.Generator().manual_seed(3))
    mask = torch.ones(B, L, dtype=torch.long)
    mask[0, 5:7] = 0
    mask[1, :3] = 0
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    return ids, mask, positions


@torch.no_grad()
def test_logits_equal_transformers_peft():
    hf, ours = peft_twin()
    ids, mask, positions = padded_batch()
    theirs = hf(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    mine = ours(input_ids=ids, attention_mask=mask, position_ids=positions)
    valid = mask.bool()
    assert (mine[valid] - theirs[valid]).abs().max() < 1e-4
    # left-padded query rows see no key: finite, not NaN
    assert torch.isfinite(mine).all()
    embeds = hf.get_input_embeddings()(ids)
    assert (
        ours(inputs_embeds=embeds) - hf(inputs_embeds=embeds).logits
    ).abs().max() < 1e-4
    assert (
        ours.forward_hidden(input_ids=ids)
        - hf(input_ids=ids, output_hidden_states=True).hidden_states[-1]
    ).abs().max() < 1e-4


@torch.no_grad()
def test_kv_cache_step_by_step_equals_full_forward():
    """An 8-token prompt (a hole in row 0, left padding in row 1) prefilled per item into the static cache, then
    four tokens fed one step at a time, against one forward over the whole sequence."""
    _, ours = peft_twin()
    ids, mask, positions = padded_batch()
    full = ours(input_ids=ids, attention_mask=mask, position_ids=positions)
    decoder = CachedDecoder(
        ours, ours.embed_tokens(ids[:, :8]), mask[:, :8], max_new_tokens=4, copies=1
    )
    steps = [decoder.first_logits] + [decoder.step(ids[:, t]) for t in range(8, 11)]
    assert (torch.stack(steps, 1) - full[:, 7:11]).abs().max() < 1e-5


@torch.no_grad()
@pytest.mark.parametrize("shared", [True, False])
def test_beam_cache_steps_and_reorders_equal_full_forwards(shared):
    """Beams decoding through the cache, reordered midway, against a forward without cache over each row's whole
    history. shared: each item's prompt is kept once for its 3 beams; else each beam is an item of its own."""
    _, ours = peft_twin()
    ids, mask, positions = padded_batch()
    copies, steps = 3, 5
    rows = torch.arange(2).repeat_interleave(copies)
    # (6, 12 + steps)
    slot_mask = torch.nn.functional.pad(mask, (0, steps), value=1)[rows]
    new_ids = torch.randint(
        0, TINY.vocab_size, (steps, 6), generator=torch.Generator().manual_seed(5)
    )
    reorders = {1: [2, 0, 0, 5, 3, 4], 2: [1, 1, 2, 3, 3, 3], 4: [0, 1, 2, 4, 4, 5]}
    if shared:
        decoder = CachedDecoder(ours, ours.embed_tokens(ids), mask, steps, copies)
        assert decoder.inputs.kv_cache.shape == (2, 6, bucket(12), bucket(steps))
    else:
        decoder = CachedDecoder(
            ours, ours.embed_tokens(ids[rows]), mask[rows], steps, copies=1
        )
    histories = [[] for _ in rows]
    for t in range(steps):
        if t in reorders:
            decoder.reorder(torch.tensor(reorders[t]), written=t)
            histories = [list(histories[source]) for source in reorders[t]]
        for history, token in zip(histories, new_ids[t].tolist()):
            history.append(token)
        stepped = decoder.step(new_ids[t])
        whole = torch.cat([ids[rows], torch.tensor(histories)], 1)  # (6, 12 + t + 1)
        whole_positions = torch.cat(
            [positions[rows], positions[rows, -1:] + torch.arange(1, t + 2)], 1
        )
        full = ours(
            input_ids=whole,
            attention_mask=slot_mask[:, : 12 + t + 1],
            position_ids=whole_positions,
        )[:, -1]
        assert (stepped - full).abs().max() < 1e-5, t


@torch.no_grad()
def test_merge_and_unmerge_lora():
    _, ours = peft_twin()
    ids, _, _ = padded_batch()
    before = ours(input_ids=ids)
    q_proj = ours.layers[0].self_attn.q_proj
    base = q_proj.weight.clone()
    ours.merge_lora()
    ours.merge_lora()  # idempotent
    assert (ours(input_ids=ids) - before).abs().max() < 1e-5
    # the adapter really moved into the weight
    assert (q_proj.weight - base).abs().max() > 1e-3
    ours.unmerge_lora()
    ours.unmerge_lora()
    assert (q_proj.weight - base).abs().max() < 1e-6
    # up_proj is not a target
    assert not isinstance(ours.layers[0].mlp.up_proj, LoRALinear)


def test_hf_key_to_ours_accepts_hf_and_both_peft_forms():
    assert (
        hf_key_to_ours("model.layers.0.self_attn.q_proj.weight")
        == "layers.0.self_attn.q_proj.weight"
    )
    assert hf_key_to_ours("lm_head.weight") == "lm_head.weight"
    assert hf_key_to_ours("model.embed_tokens.weight") == "embed_tokens.weight"
    peft = "base_model.model.model.layers.3.self_attn.q_proj."
    assert (
        hf_key_to_ours(peft + "base_layer.weight") == "layers.3.self_attn.q_proj.weight"
    )
    # peft < 0.7 form
    assert hf_key_to_ours(peft + "bias") == "layers.3.self_attn.q_proj.bias"
    assert (
        hf_key_to_ours(peft + "lora_A.default.weight")
        == "layers.3.self_attn.q_proj.lora_A"
    )
    assert (
        hf_key_to_ours(
            "base_model.model.model.layers.3.mlp.down_proj.lora_B.default.weight"
        )
        == "layers.3.mlp.down_proj.lora_B"
    )
    assert hf_key_to_ours("base_model.model.lm_head.weight") == "lm_head.weight"
    assert hf_key_to_ours("model.rotary_emb.inv_freq") is None
    assert hf_key_to_ours("speaker_head.weight") is None


def test_config_from_hf_reads_both_rope_layouts_and_refuses_what_it_cannot_run():
    assert Qwen2Config.from_hf({"rope_theta": 5e5}).rope_theta == 5e5
    assert (
        Qwen2Config.from_hf(
            {"rope_parameters": {"rope_type": "default", "rope_theta": 5e5}}
        ).rope_theta
        == 5e5
    )
    with pytest.raises(WeightsError, match="RoPE scaling"):
        Qwen2Config.from_hf({"rope_scaling": {"type": "yarn", "factor": 4.0}})
    with pytest.raises(WeightsError, match="sliding_window"):
        Qwen2Config.from_hf({"use_sliding_window": True})


def test_presets_have_the_published_parameter_counts():
    published = {
        "qwen2-7b": 7_615_616_512,
        "qwen2-0.5b": 494_032_768,
        "qwen2.5-0.5b": 494_032_768,
        "qwen2-1.5b": 1_543_714_304,
        "qwen2.5-1.5b": 1_543_714_304,
    }
    for name, count in published.items():
        with torch.device("meta"):
            model = Qwen2(Qwen2Config(**{**LLM_PRESETS[name].__dict__, "lora_rank": 0}))
        assert sum(p.numel() for p in model.parameters()) == count, name
    assert (
        LLM_PRESETS["qwen2-7b"].lora_rank == 8
        and LLM_PRESETS["qwen2-7b"].head_dim == 128
    )


@torch.no_grad()
def test_new_model_token_embeddings_start_at_qwen2_initializer_range():
    """A model trained from scratch starts its token embeddings at N(0, 0.02), as Qwen2 does; PyTorch's N(0, 1)
    made the CPU experiment's LLM ignore the audio for hundreds of steps (README, the experiment)."""
    torch.manual_seed(0)
    weight = Qwen2(TINY).embed_tokens.weight
    assert abs(weight.mean().item()) < 2e-3 and 0.018 < weight.std().item() < 0.022


def test_load_hf_checkpoint_sharded_and_strict(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = Qwen2Config(**{**TINY.__dict__, "lora_rank": 0, "tie_embeddings": True})
    torch.manual_seed(1)
    hf = transformers.Qwen2ForCausalLM(hf_config(cfg)).eval()
    # several shards plus an index json
    hf.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    ours = load_hf_checkpoint(tmp_path)
    assert (
        ours.config.tie_embeddings and ours.lm_head.weight is ours.embed_tokens.weight
    )
    ids, _, _ = padded_batch()
    assert (ours(input_ids=ids) - hf(input_ids=ids).logits).abs().max() < 1e-4
    with pytest.raises(
        WeightsError, match=r"test: missing 1 key\(s\): layers.1.mlp.up_proj.weight$"
    ):
        state = {
            k: v
            for k, v in ours.state_dict().items()
            if k != "layers.1.mlp.up_proj.weight"
        }
        load_state_dict_strict(Qwen2(cfg), state, "test")
    with pytest.raises(WeightsError, match="no \\*.safetensors"):
        (tmp_path / "empty").mkdir()
        (tmp_path / "empty" / "config.json").write_text(
            (tmp_path / "config.json").read_text()
        )
        load_hf_checkpoint(tmp_path / "empty")


def test_strict_load_ties_shared_weights_allows_only_new_adapters_and_names_what_does_not_fit():
    cfg = Qwen2Config(**{**TINY.__dict__, "tie_embeddings": True})
    torch.manual_seed(2)
    state = Qwen2(cfg).state_dict()
    with torch.device("meta"):
        empty = Qwen2(cfg)
    loaded = load_state_dict_strict(empty, state, "s")
    assert loaded.lm_head.weight is loaded.embed_tokens.weight and torch.equal(
        loaded.lm_head.weight, state["embed_tokens.weight"]
    )
    base = {name: tensor for name, tensor in state.items() if ".lora_" not in name}
    with pytest.raises(
        WeightsError,
        match=r"^s: missing \d+ key\(s\): layers.0.self_attn.q_proj.lora_A",
    ):
        load_state_dict_strict(Qwen2(cfg), base, "s")
    fresh = Qwen2(cfg)
    adapter = fresh.layers[0].self_attn.q_proj.lora_A.clone()
    load_state_dict_strict(fresh, base, "s", new=lambda name: ".lora_" in name)
    # the new adapter keeps its init
    assert torch.equal(fresh.layers[0].self_attn.q_proj.lora_A, adapter)
    assert torch.equal(fresh.norm.weight, state["norm.weight"])
    with pytest.raises(WeightsError, match=r"^s: unexpected 1 key\(s\): extra$"):
        load_state_dict_strict(Qwen2(cfg), {**state, "extra": torch.zeros(1)}, "s")
    with pytest.raises(
        WeightsError, match=r"^s: norm.weight has shape \(3,\), the model's is \(64,\)$"
    ):
        load_state_dict_strict(
            Qwen2(cfg), {**state, "norm.weight": torch.zeros(3)}, "s"
        )


@torch.no_grad()
def test_fixture_a_prefill_logits():
    expected = load_file(FIXTURE / "expected.safetensors")
    logits = fixture_llm()(inputs_embeds=expected["generate_inputs_embeds"][None])[0]
    assert (logits - expected["generate_prefill_logits"]).abs().max() < 1e-4


@torch.no_grad()
def test_real_qwen25_gguf_weights_greedy_and_logits():
    if os.environ.get("OSUM_TEST_GGUF") != "1":
        pytest.skip(
            "opt-in: set OSUM_TEST_GGUF=1 to download ~478 MB of real Qwen2.5-0.5B GGUF weights"
        )
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("gguf")
    from osum_min.model.generate import GenerationConfig, generate

    path = gguf_file(ASSETS)
    tokenizer = transformers.AutoTokenizer.from_pretrained(
        path.parent, gguf_file=path.name
    )
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    ).eval()
    ours = Qwen2(Qwen2Config.from_hf(hf.config.to_dict()))
    load_state_dict_strict(
        ours,
        {hf_key_to_ours(k): v for k, v in hf.state_dict().items() if hf_key_to_ours(k)},
        GGUF_NAME,
    ).eval()
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    assert (ours(input_ids=ids) - hf(input_ids=ids).logits).abs().max() < 1e-3
    theirs = hf.generate(ids, max_new_tokens=20, do_sample=False, eos_token_id=None)[
        0, ids.shape[1] :
    ].tolist()
    mine = generate(
        ours,
        ours.embed_tokens(ids),
        None,
        GenerationConfig(max_new_tokens=20, eos_token_id=None),
    )[0]
    assert mine == theirs and len(mine) == 20
    assert tokenizer.decode(mine).startswith(" Paris")
