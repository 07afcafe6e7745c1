"""convert.py + OSUM end to end on fixture_a, the released layout on the meta device, and strictness.

Tolerances: speech embeddings 1e-4, loss 1e-4 (fixture README); generated ids exact; beam scores 1e-4.
"""

import csv
import json
from dataclasses import replace

import pytest
import torch

import convert
from conftest import FIXTURE_A, FIXTURES
from osum_min.model.osum import OLD_LLM_NAMES, OSUM, OSUM_PRESETS, OSUMConfig
from osum_min.model.qwen2 import Qwen2Config

PROMPT = [17, 230, 511, 42, 901, 7, 333]
GREEDY = dict(num_beams=1, repetition_penalty=1.0, max_new_tokens=16)
BEAM4 = dict(num_beams=4, repetition_penalty=1.0, max_new_tokens=16)


@pytest.fixture(scope="module")
def model(fixture_weights) -> OSUM:
    return OSUM.from_pretrained(fixture_weights, device="cpu")


def run(model, expected, **settings):
    feats = expected["feats"][None]
    return model.generate(feats, torch.tensor([276]), [PROMPT], **settings)[0]


@pytest.mark.parametrize(
    "name, settings",
    [
        ("generate_greedy_ids", GREEDY),
        ("generate_greedy_rep1.05_ids", {**GREEDY, "repetition_penalty": 1.05}),
        ("generate_beam4_ids", BEAM4),
        ("generate_beam4_rep1.05_ids", {**BEAM4, "repetition_penalty": 1.05}),
        ("generate_greedy_eos_ids", {**GREEDY, "eos_token_id": 514}),
        ("generate_beam4_eos_ids", {**BEAM4, "eos_token_id": 514}),
    ],
)
def test_generate_from_features_reproduces_the_original(
    model, expected, name, settings
):
    assert run(model, expected, **settings) == expected[name].tolist()


@pytest.mark.parametrize("suffix, penalty", [("", 1.0), ("_rep1.05", 1.05)])
def test_beam_returned_sequences_and_scores(model, expected, suffix, penalty):
    sequences, scores = model.generate(
        expected["feats"][None],
        torch.tensor([276]),
        [PROMPT],
        return_scores=True,
        num_return_sequences=4,
        **{**BEAM4, "repetition_penalty": penalty},
    )
    assert (
        sequences == expected[f"generate_beam4{suffix}_all_returned_sequences"].tolist()
    )
    assert torch.allclose(
        torch.tensor(scores),
        expected[f"generate_beam4{suffix}_sequences_scores"],
        atol=1e-4,
    )


def test_default_eos_is_the_original_hard_coded_id(model):
    assert model.config.eod_id == 151643


@pytest.mark.parametrize("settings", [GREEDY, BEAM4])
def test_features_that_are_nan_end_their_item_with_a_nan_score(
    model, expected, settings
):
    """Non-finite features printed `0 0 0 ...` (issue 23): the item now ends at once, scored NaN, and the item
    beside it in the batch gets its ids and score as alone."""
    feats, lengths = expected["batch_feats"].clone(), expected["batch_feats_lengths"]
    prompts = [PROMPT, [88, 12, 640, 5, 77]]
    feats[0, 10:20] = float("nan")
    ids, scores = model.generate(
        feats, lengths, prompts, return_scores=True, **settings
    )
    alone_ids, alone_scores = model.generate(
        feats[1:, : lengths[1]],
        lengths[1:],
        prompts[1:],
        return_scores=True,
        **settings,
    )
    assert ids[0] == [] and scores[0] != scores[0]  # NaN
    assert ids[1:] == alone_ids and scores[1:] == alone_scores


def fixture_batch(expected):
    prompts = [[t for t in row if t != -1] for row in expected["batch_prompt"].tolist()]
    labels = [
        [t for t in row if t != -100] for row in expected["batch_target"].tolist()
    ]
    return expected["batch_feats"], expected["batch_feats_lengths"], prompts, labels


def test_loss_equals_the_original_training_loss(fixture_weights, expected):
    model = OSUM.from_pretrained(fixture_weights, device="cpu", for_training=True)
    with torch.no_grad():
        loss = model.loss(*fixture_batch(expected))
    assert abs(loss.item() - expected["batch_loss"].item()) < 1e-4  # 7.3029351


def test_loss_with_merged_lora_is_the_same(model, expected):
    with torch.no_grad():
        assert (
            abs(
                model.loss(*fixture_batch(expected)).item()
                - expected["batch_loss"].item()
            )
            < 1e-4
        )


def test_converted_files_keep_lora_separate(fixture_weights):
    from safetensors import safe_open

    with safe_open(str(fixture_weights / "model.safetensors"), "pt") as f:
        names = set(f.keys())
    assert (
        "llm.layers.0.self_attn.q_proj.lora_A" in names
        and "llm.layers.0.mlp.up_proj.weight" in names
    )
    assert not any("lora" in name for name in names if ".up_proj." in name)


# --- the released checkpoint's layout, without the file -------------------------------------------------------------


def released_layout(peft_form: str) -> dict[str, tuple[int, ...]]:
    rows = list(
        csv.DictReader(open(FIXTURES / "checkpoint_layout.tsv"), delimiter="\t")
    )
    layout = {
        row["key"]: tuple(int(n) for n in row["shape"].split("x")) for row in rows
    }
    if peft_form == "old":  # peft < 0.7 stored the base weight without .base_layer
        layout = {
            key.replace(".base_layer.", "."): shape for key, shape in layout.items()
        }
    return layout


@pytest.mark.parametrize("peft_form", ["new", "old"])
def test_every_released_key_maps_to_a_tensor_of_the_same_shape(peft_form):
    layout = released_layout(peft_form)
    assert len(layout) == 1128
    config = convert.config_from_original(
        json.loads((FIXTURES / "released_config.json").read_text())
    )
    source = {key: torch.empty(shape, device="meta") for key, shape in layout.items()}
    # raises on any unmapped / unfilled / shape
    entries = convert.convert_entries(source, config, dtype=None)
    with torch.device("meta"):
        model_keys = set(OSUM(config).state_dict())
    assert {name for name, *_ in entries} == model_keys
    dropped = [key for key in layout if convert.map_key(key) is None]
    assert sorted(dropped) == sorted(
        [
            "ln_speech.weight",
            "ln_speech.bias",
            "speaker_head.weight",
            "speaker_head.bias",
            "embed_tokens.weight",
            "lm_head.weight",
        ]
    )
    assert len(layout) - len(dropped) == len(model_keys)


# --- strictness ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fixture_state():
    return torch.load(FIXTURE_A / "infer.pt", weights_only=True)


def convert_state(state, tmp_path, capsys):
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    code = convert.main(
        [
            str(path),
            "--config",
            str(FIXTURE_A / "osum_config.json"),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    err = capsys.readouterr().err.strip()
    return code, err


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda s: s.pop("encoder.encoders.1.norm2.bias"),
            "missing 1 key(s): encoder.blocks.1.mlp_ln.bias",
        ),
        (
            lambda s: s.update({"encoder.extra.weight": torch.zeros(3)}),
            "unexpected 1 key(s): encoder.extra.weight",
        ),
        (
            lambda s: s.update({"speech_llama_proj.weight": torch.zeros(64, 65)}),
            "speech_llama_proj.weight: shape",
        ),
        (
            lambda s: s.update(
                {
                    "llama_model.base_model.model.model.layers.0.self_attn.rotary.weight": torch.zeros(
                        1
                    )
                }
            ),
            "unexpected 1 key(s)",
        ),
    ],
)
def test_mismatched_checkpoints_are_refused_in_one_line(
    fixture_state, tmp_path, capsys, change, message
):
    state = dict(fixture_state)
    change(state)
    code, err = convert_state(state, tmp_path, capsys)
    assert (
        code == 2 and message in err and len(err.splitlines()) == 1 and "bad.pt" in err
    )


def test_truncated_and_foreign_files_are_refused(tmp_path, capsys):
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes((FIXTURE_A / "infer.pt").read_bytes()[:100_000])
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint\n")
    for path in (truncated, text, tmp_path / "absent.pt"):
        code = convert.main(
            [
                str(path),
                "--config",
                str(FIXTURE_A / "osum_config.json"),
                "--out",
                str(tmp_path),
            ]
        )
        err = capsys.readouterr().err.strip()
        assert code == 2 and path.name in err and len(err.splitlines()) == 1


def test_from_pretrained_refuses_a_weights_file_that_does_not_fit(
    fixture_weights, tmp_path
):
    import shutil
    from osum_min.weights import WeightsError

    broken = tmp_path / "broken"
    shutil.copytree(fixture_weights, broken)
    config = json.loads((broken / "config.json").read_text())
    config["llm"]["layers"] = 3
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(WeightsError, match="missing .* llm.layers.2"):
        OSUM.from_pretrained(broken, device="cpu")


class HeadersOnly:
    """safe_open that lets a test see every tensor read: names and shapes come from the header, tensors are counted."""

    read: list[str] = []

    def __init__(self, *args, **kwargs):
        from safetensors import safe_open

        self.handle = safe_open(*args, **kwargs)

    def __enter__(self):
        self.handle.__enter__()
        return self

    def __exit__(self, *exc):
        return self.handle.__exit__(*exc)

    def keys(self):
        return self.handle.keys()

    def get_slice(self, name):
        return self.handle.get_slice(name)

    def get_tensor(self, name):
        HeadersOnly.read.append(name)
        return self.handle.get_tensor(name)


def test_a_directory_that_does_not_fit_is_refused_before_any_tensor_is_read(
    fixture_weights, tmp_path, monkeypatch
):
    import shutil
    from osum_min import weights

    broken = tmp_path / "broken"
    shutil.copytree(fixture_weights, broken)
    config = json.loads((broken / "config.json").read_text())
    config["llm"]["layers"] = 3
    (broken / "config.json").write_text(json.dumps(config))
    monkeypatch.setattr(weights, "safe_open", HeadersOnly)
    HeadersOnly.read = []
    with pytest.raises(weights.WeightsError, match="missing .* llm.layers.2"):
        OSUM.from_pretrained(broken, device="cpu")
    assert HeadersOnly.read == []


def test_tied_embeddings_stay_one_tensor_through_save_and_load(tmp_path, monkeypatch):
    from osum_min import weights

    tiny = OSUM_PRESETS["tiny"]
    torch.manual_seed(0)
    model = OSUM(replace(tiny, llm=replace(tiny.llm, tie_embeddings=True)))
    model.save_pretrained(tmp_path)
    monkeypatch.setattr(weights, "safe_open", HeadersOnly)
    HeadersOnly.read = []
    loaded = OSUM.from_pretrained(tmp_path, device="cpu", for_training=True)
    assert loaded.llm.lm_head.weight is loaded.llm.embed_tokens.weight
    assert torch.equal(loaded.llm.embed_tokens.weight, model.llm.embed_tokens.weight)
    assert (
        "llm.lm_head.weight" not in HeadersOnly.read
        and "llm.embed_tokens.weight" in HeadersOnly.read
    )


def test_config_round_trips(fixture_weights):
    config = OSUMConfig.from_dict(
        json.loads((fixture_weights / "config.json").read_text())
    )
    assert json.loads(json.dumps(config.to_dict())) == json.loads(
        (fixture_weights / "config.json").read_text()
    )
    assert (
        config.llm.lora_rank == 8
        and config.adaptor.ff_dim == 2560
        and config.encoder.layers == 2
    )


# An "llm" section as convert.py wrote it before Qwen2Config took our field names (Hugging Face's then).
OLD_STYLE_LLM = {
    "vocab_size": 1024,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_layers": 2,
    "num_heads": 4,
    "num_kv_heads": 2,
    "rope_theta": 10000.0,
    "rms_norm_eps": 1e-05,
    "tie_word_embeddings": True,
    "max_position_embeddings": 512,
    "lora_rank": 8,
    "lora_alpha": 32,
    "lora_dropout": 0.1,
    "lora_targets": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "down_proj"],
}
NEW_STYLE = replace(
    OSUM_PRESETS["tiny"],
    llm=Qwen2Config(
        vocab_size=1024,
        dim=64,
        ff_dim=128,
        layers=2,
        heads=4,
        kv_heads=2,
        rope_theta=10000.0,
        norm_eps=1e-05,
        tie_embeddings=True,
        max_positions=512,
        lora_rank=8,
        lora_alpha=32,
        lora_dropout=0.1,
    ),
)


def test_a_config_json_with_the_old_llm_names_loads_as_the_new_one(tmp_path):
    written = NEW_STYLE.to_dict()
    # writes only the new names
    assert not set(written["llm"]) & set(OLD_LLM_NAMES) and "dim" in written["llm"]
    (tmp_path / "new.json").write_text(json.dumps(written))
    (tmp_path / "old.json").write_text(json.dumps({**written, "llm": OLD_STYLE_LLM}))
    assert (
        OSUMConfig.from_file(tmp_path / "old.json")
        == OSUMConfig.from_file(tmp_path / "new.json")
        == NEW_STYLE
    )


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"hidden_sizes": 64}, "unexpected keyword argument 'hidden_sizes'"),
        ({"hidden_size": 64}, "its old and its new name (hidden_size/dim)"),
    ],
)
def test_a_config_json_with_an_unknown_or_doubled_llm_field_is_refused_in_one_line(
    tmp_path, extra, message
):
    written = NEW_STYLE.to_dict()
    (tmp_path / "config.json").write_text(
        json.dumps({**written, "llm": {**written["llm"], **extra}})
    )
    with pytest.raises(ValueError) as refused:
        OSUMConfig.from_file(tmp_path / "config.json")
    assert message in str(refused.value) and str(tmp_path / "config.json") in str(
        refused.value
    )
    assert len(str(refused.value).splitlines()) == 1


def test_only_inference_loading_lays_weights_out_for_onednn(model, fixture_weights):
    up = model.llm.layers[0].mlp.up_proj.weight  # (out, in) stored input-major
    assert up.stride() == (1, up.shape[0])
    trainable = OSUM.from_pretrained(fixture_weights, device="cpu", for_training=True)
    assert all(p.is_contiguous() for p in trainable.parameters())


def test_save_pretrained_round_trips(model, tmp_path, expected):
    model.save_pretrained(tmp_path / "saved")
    again = OSUM.from_pretrained(tmp_path / "saved", device="cpu")
    assert run(again, expected, **GREEDY) == expected["generate_greedy_ids"].tolist()
    for (name, a), (_, b) in zip(
        model.state_dict().items(), again.state_dict().items()
    ):
        assert torch.allclose(a, b, atol=1e-6), name
