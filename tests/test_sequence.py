"""The one LLM input layout (osum_min/model/sequence.py): the original's slots, positions and logits; each item in
a batch the same as alone, in training and decoding, whatever the prompts' lengths and the segments' order."""

import pytest
import torch

from osum_min.model.osum import OSUM
from osum_min.model.sequence import IGNORE_ID, left_padded

PROMPTS = [[17, 230, 511, 42, 901, 7, 333], [88, 12, 640, 5, 77]]
GREEDY = dict(num_beams=1, repetition_penalty=1.0, max_new_tokens=16)
BEAM4 = dict(num_beams=4, repetition_penalty=1.0, max_new_tokens=16)
ORDERS = ["original order", "prompt after speech"]


class PromptAfterSpeech(OSUM):
    """The issue's change: the prompt moved after the speech, in `_item` alone."""

    def _item(self, prompt, speech, label, label_ids=()):
        bos, eos = self.speech_bos_eos.to(speech.dtype)[:, None, :]  # (1, H) each
        embeds = torch.cat([bos, speech, eos, prompt, label])  # (1 + S + 1 + P + A, H)
        targets = torch.full((embeds.shape[0],), IGNORE_ID)
        targets[embeds.shape[0] - len(label_ids) :] = torch.tensor(
            label_ids, dtype=torch.long
        )
        return embeds, targets


@pytest.fixture(scope="module", params=[OSUM, PromptAfterSpeech], ids=ORDERS)
def trainable(request, fixture_weights) -> OSUM:
    return request.param.from_pretrained(
        fixture_weights, device="cpu", for_training=True
    )


def fixture_labels(expected) -> list[list[int]]:
    return [[t for t in row if t != -100] for row in expected["batch_target"].tolist()]


def test_real_slots_are_the_originals_and_give_its_logits(fixture_weights, expected):
    """The fixture's batch as the original's LLM received it (padding inside the row): our left-padded rows hold the
    same real slots in the same order, with the same position ids and targets, and give the same logits there."""
    model = OSUM.from_pretrained(fixture_weights, device="cpu", for_training=True)
    prompts = [[t for t in row if t != -1] for row in expected["batch_prompt"].tolist()]
    with torch.no_grad():
        speech, lengths = model.embed_speech(
            expected["batch_feats"], expected["batch_feats_lengths"]
        )
        batch = model.sequences(
            prompts,
            [row[:n] for row, n in zip(speech, lengths)],
            fixture_labels(expected),
        )
        logits = model.llm(
            inputs_embeds=batch.inputs_embeds,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
        )
    ours, theirs = (
        batch.attention_mask.bool(),
        expected["batch_llm_attention_mask"].bool(),
    )
    # the rows differ in length: some padding
    assert (ours.sum(-1) == theirs.sum(-1)).all() and not ours.all()
    for row in range(2):
        mine, original = ours[row], theirs[row]
        assert (
            batch.position_ids[row, mine].tolist()
            == expected["batch_llm_position_ids"][row, original].tolist()
        )
        assert (
            batch.targets[row, mine].tolist()
            == expected["batch_llm_labels"][row, original].tolist()
        )
        assert torch.allclose(
            batch.inputs_embeds[row, mine],
            expected["batch_llm_inputs_embeds"][row, original],
            atol=1e-4,
        )
        assert torch.allclose(
            logits[row, mine], expected["batch_llm_logits"][row, original], atol=1e-4
        )


def test_the_slot_before_each_label_is_real_and_padding_comes_first():
    items = [
        (torch.randn(n, 4), torch.tensor([IGNORE_ID] * (n - a) + list(range(a))))
        for n, a in [(6, 2), (3, 1)]
    ]
    batch = left_padded(items)
    assert batch.attention_mask.tolist() == [[1] * 6, [0, 0, 0, 1, 1, 1]]
    assert batch.position_ids.tolist() == [list(range(6)), [1, 1, 1, 0, 1, 2]]
    assert torch.equal(batch.inputs_embeds[1, :3], torch.zeros(3, 4))
    labelled = batch.targets != IGNORE_ID
    assert labelled.sum().item() == 3
    # no label is predicted from padding
    assert batch.attention_mask[:, :-1][labelled[:, 1:]].all()


@pytest.mark.parametrize(
    "prompts",
    [PROMPTS, [[], PROMPTS[1]], [PROMPTS[1], PROMPTS[0] * 3]],
    ids=["7+5", "0+5", "5+21"],
)
def test_training_batch_equals_each_item_alone(trainable, expected, prompts):
    """Each item's summed loss in a batch is its loss alone, and the batch loss their token mean. Frames 276 and
    218 (both even) keep the encoder's batch rule (docs/original.md §9.1) from changing the speech."""
    feats, lengths = expected["batch_feats"], torch.tensor([276, 218])
    labels = [fixture_labels(expected)[0], fixture_labels(expected)[1][:4]]
    with torch.no_grad():
        together = trainable(feats, lengths, prompts, labels)
        alone = torch.cat(
            [
                trainable(
                    feats[i : i + 1, : lengths[i]],
                    lengths[i : i + 1],
                    prompts[i : i + 1],
                    labels[i : i + 1],
                ).item_losses
                for i in range(2)
            ]
        )
    assert torch.allclose(together.item_losses, alone, rtol=1e-5)
    assert together.loss.item() == pytest.approx(
        alone.sum().item() / sum(map(len, labels)), rel=1e-5
    )


@pytest.fixture(scope="module", params=[OSUM, PromptAfterSpeech], ids=ORDERS)
def decoder(request, fixture_weights) -> OSUM:
    return request.param.from_pretrained(fixture_weights, device="cpu")


@pytest.mark.parametrize(
    "settings", [GREEDY, BEAM4, {**BEAM4, "repetition_penalty": 1.05}]
)
def test_decoding_batch_equals_each_item_alone(decoder, expected, settings):
    feats, lengths = expected["batch_feats"], expected["batch_feats_lengths"]
    together = decoder.generate(feats, lengths, PROMPTS, **settings)
    alone = [
        decoder.generate(
            feats[i : i + 1, : lengths[i]],
            lengths[i : i + 1],
            PROMPTS[i : i + 1],
            **settings,
        )[0]
        for i in range(2)
    ]
    assert together == alone


def test_a_training_batch_looks_its_ids_up_once(trainable, expected):
    """Each embedding lookup's backward writes a dense (vocabulary, H) gradient when the embeddings train: one
    lookup per segment made the asr_gender recipe's training 2.6x slower (13.3 -> 5.0 samples/s)."""
    calls = []
    hook = trainable.llm.embed_tokens.register_forward_hook(
        lambda *args: calls.append(1)
    )
    feats, lengths = expected["batch_feats"], expected["batch_feats_lengths"]
    try:
        trainable(feats, lengths, PROMPTS, fixture_labels(expected))
    finally:
        hook.remove()
    assert len(calls) == 1
