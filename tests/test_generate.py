"""Decoding equals transformers' generate (greedy, beam, penalties, eos).

Batches equal rows alone, and sampling is sound."""

import math

import pytest
import torch
from safetensors.torch import load_file

from hf_qwen2 import peft_twin
from osum_min.model.generate import (
    ORIGINAL_DECODING,
    CachedDecoder,
    DecodingStopped,
    GenerationConfig,
    GenerationError,
    decode_step,
    fast_decoding,
    generate,
)
from test_qwen2 import FIXTURE, fixture_llm

NEVER = 10**6  # an eos id outside the vocabulary: runs last max_new_tokens


@pytest.fixture(scope="module")
def twin():
    hf, ours = peft_twin(seed=7)
    embeds = torch.randn(
        1, 9, ours.config.dim, generator=torch.Generator().manual_seed(11)
    )
    return hf, ours, embeds


def hf_generate(hf, embeds, **kwargs):
    out = hf.generate(
        inputs_embeds=embeds,
        attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long),
        do_sample=False,
        pad_token_id=0,
        return_dict_in_generate=True,
        output_scores=True,
        **kwargs,
    )
    return out


def trim(rows, eos):
    """HF pads finished rows; cut after the first eos like ours."""
    cut = []
    for row in rows:
        end = next((i + 1 for i, token in enumerate(row) if token == eos), len(row))
        cut.append(row[:end])
    return cut


@pytest.mark.parametrize(
    "num_beams,penalty", [(1, 1.0), (1, 1.05), (4, 1.0), (4, 1.05)]
)
def test_ids_and_beam_scores_equal_transformers(twin, num_beams, penalty):
    hf, ours, embeds = twin
    returned = num_beams  # all beams, to compare every sequences_score
    theirs = hf_generate(
        hf,
        embeds,
        max_new_tokens=12,
        num_beams=num_beams,
        repetition_penalty=penalty,
        num_return_sequences=returned,
        eos_token_id=NEVER,
    )
    config = GenerationConfig(
        max_new_tokens=12,
        num_beams=num_beams,
        repetition_penalty=penalty,
        num_return_sequences=returned,
        eos_token_id=NEVER,
    )
    mine, scores = generate(ours, embeds, None, config, return_scores=True)
    assert mine == theirs.sequences.tolist()
    if num_beams > 1:
        assert (torch.tensor(scores) - theirs.sequences_scores).abs().max() < 1e-4


@pytest.mark.parametrize("num_beams", [1, 4])
def test_eos_hit_midway_stops_like_transformers(twin, num_beams):
    hf, ours, embeds = twin
    greedy = generate(
        ours, embeds, None, GenerationConfig(max_new_tokens=12, eos_token_id=NEVER)
    )[0]
    eos = greedy[4]  # a token greedy produces at step 5
    theirs = hf_generate(
        hf,
        embeds,
        max_new_tokens=12,
        num_beams=num_beams,
        num_return_sequences=num_beams,
        eos_token_id=eos,
    )
    mine, scores = generate(
        ours,
        embeds,
        None,
        GenerationConfig(
            max_new_tokens=12,
            num_beams=num_beams,
            num_return_sequences=num_beams,
            eos_token_id=eos,
        ),
        return_scores=True,
    )
    assert mine == trim(theirs.sequences.tolist(), eos)
    # the eos really was hit mid-way
    assert any(seq[-1] == eos and len(seq) < 12 for seq in mine)
    if num_beams > 1:
        assert (torch.tensor(scores) - theirs.sequences_scores).abs().max() < 1e-4


@pytest.mark.parametrize(
    "config",
    [
        GenerationConfig(max_new_tokens=10, eos_token_id=[NEVER, 3]),
        GenerationConfig(
            max_new_tokens=10,
            num_beams=4,
            repetition_penalty=1.05,
            num_return_sequences=2,
            eos_token_id=NEVER,
        ),
    ],
)
def test_batch_of_different_lengths_equals_each_alone(twin, config):
    _, ours, _ = twin
    generator = torch.Generator().manual_seed(5)
    prompts = [torch.randn(n, ours.config.dim, generator=generator) for n in (7, 3, 5)]
    longest = max(len(p) for p in prompts)
    embeds = torch.zeros(len(prompts), longest, ours.config.dim)
    mask = torch.zeros(len(prompts), longest, dtype=torch.long)
    for row, prompt in enumerate(prompts):  # left padding
        embeds[row, longest - len(prompt) :], mask[row, longest - len(prompt) :] = (
            prompt,
            1,
        )
    batched = generate(ours, embeds, mask, config)
    alone = [
        seq for prompt in prompts for seq in generate(ours, prompt[None], None, config)
    ]
    assert batched == alone


@pytest.mark.parametrize("num_beams", [1, 4])
def test_masked_slots_inside_the_prompt_are_as_if_absent(twin, num_beams):
    """A 0 inside the mask (not only left padding) hides that slot: the same as leaving the token out, since
    position ids count real tokens only."""
    _, ours, _ = twin
    config = GenerationConfig(max_new_tokens=8, num_beams=num_beams, eos_token_id=NEVER)
    prompt = torch.randn(
        2, 9, ours.config.dim, generator=torch.Generator().manual_seed(6)
    )
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[0, :2] = mask[0, 4:6] = mask[1, 7] = 0
    holes = generate(ours, prompt, mask, config)
    absent = [
        generate(ours, prompt[row, mask[row].bool()][None], None, config)[0]
        for row in range(2)
    ]
    assert holes == absent


def test_streaming_callback_sees_every_token(twin):
    _, ours, embeds = twin
    streamed = []
    ids = generate(
        ours,
        embeds,
        None,
        GenerationConfig(max_new_tokens=8, eos_token_id=NEVER),
        on_token=lambda row, token: streamed.append((row, token)),
    )
    assert streamed == [(0, token) for token in ids[0]]


@pytest.mark.parametrize("num_beams", [1, 4])
def test_keep_going_saying_no_stops_before_the_next_step(twin, num_beams):
    """A server stops a batch whose clients all went away: keep_going() is asked before each step, and a no stops
    decoding there; while it says yes, the ids are those of a call without it."""
    _, ours, embeds = twin
    config = GenerationConfig(
        max_new_tokens=12, num_beams=num_beams, eos_token_id=NEVER
    )
    asked = []
    assert generate(
        ours, embeds, None, config, keep_going=lambda: asked.append(1) or True
    ) == generate(ours, embeds, None, config)
    assert len(asked) == 12
    asked.clear()
    with pytest.raises(DecodingStopped, match="after 3 new tokens"):
        generate(
            ours,
            embeds,
            None,
            config,
            keep_going=lambda: asked.append(1) or len(asked) <= 3,
        )
    assert len(asked) == 4


@pytest.mark.parametrize(
    "changes, message",
    [
        (
            {"do_sample": True, "temperature": 0},
            "temperature is 0, below 0.0001 (sampling",
        ),
        ({"temperature": 1e-45}, "temperature is 1e-45, below 0.0001"),
        ({"temperature": math.inf}, "temperature is inf, not a finite number"),
        ({"temperature": "0.7"}, "temperature is '0.7', not a finite number"),
        ({"top_p": 0.0}, "top_p is 0.0, not above 0"),
        ({"top_p": 1.01}, "top_p is 1.01, above 1"),
        ({"top_k": -1}, "top_k is -1, below 0"),
        ({"top_k": 2.0}, "top_k is 2.0, not a whole number"),
        ({"num_beams": 0}, "num_beams is 0, below 1"),
        ({"num_beams": True}, "num_beams is True, not a whole number"),
        ({"max_new_tokens": 0}, "max_new_tokens is 0, below 1"),
        ({"repetition_penalty": 0.0}, "repetition_penalty is 0.0, not above 0"),
        (
            {"repetition_penalty": math.nan},
            "repetition_penalty is nan, not a finite number",
        ),
        ({"do_sample": "yes"}, "do_sample is 'yes', not true or false"),
        ({"seed": 2**64}, "seed is 18446744073709551616, not a whole number from"),
        ({"seed": 1.0}, "seed is 1.0, not a whole number from"),
        ({"seed": True}, "seed is True, not a whole number from"),
        ({"eos_token_id": "151643"}, "eos_token_id is '151643', not a token id"),
        ({"eos_token_id": [1, -2]}, "eos_token_id is [1, -2], not a token id"),
        (
            {"num_return_sequences": 2},
            "num_return_sequences is 2, above 1: more sequences",
        ),
    ],
)
def test_generation_config_checks_itself_in_one_line(changes, message):
    """Every field by the one config rule, wherever a config is built (issue 28 item 5)."""
    from osum_min.config_check import ConfigError

    with pytest.raises(ConfigError) as err:
        GenerationConfig(**changes)
    assert str(err.value).startswith(message) and "\n" not in str(err.value), str(
        err.value
    )


def test_generation_config_takes_what_decoding_can_do():
    for changes in (
        {"do_sample": True, "temperature": 1e-4, "seed": 2**64 - 1},
        {"seed": -(2**63), "top_p": 1, "top_k": 0, "length_penalty": -1.0},
        {"num_beams": 4, "num_return_sequences": 4, "eos_token_id": None},
        {"do_sample": True, "num_return_sequences": 3, "eos_token_id": [1, 2]},
    ):
        GenerationConfig(**changes)


def test_bad_settings_fail_with_one_line_errors(twin):
    _, ours, embeds = twin
    with pytest.raises(
        GenerationError, match=r"attention_mask \(1, 3\) does not match"
    ):
        generate(ours, embeds, torch.ones(1, 3), GenerationConfig())


def test_fixture_a_generation_reproduced():
    expected = load_file(FIXTURE / "expected.safetensors")
    model = fixture_llm()
    embeds = expected["generate_inputs_embeds"][None]
    greedy = generate(
        model, embeds, None, GenerationConfig(max_new_tokens=16, eos_token_id=151643)
    )[0]
    with torch.no_grad():  # step logits through the KV cache, as generate feeds them
        decoder = CachedDecoder(
            model, embeds, torch.ones(embeds.shape[:2], dtype=torch.long), 16, copies=1
        )
        logits = [decoder.first_logits] + [
            decoder.step(torch.tensor([token])) for token in greedy[:15]
        ]
    assert (
        torch.cat(logits) - expected["generate_greedy_step_logits"]
    ).abs().max() < 1e-3
    model.merge_lora()  # as inference runs it
    for name, beams, penalty in [
        ("greedy", 1, 1.0),
        ("greedy_rep1.05", 1, 1.05),
        ("beam4", 4, 1.0),
        ("beam4_rep1.05", 4, 1.05),
    ]:
        config = GenerationConfig(
            max_new_tokens=16,
            num_beams=beams,
            repetition_penalty=penalty,
            eos_token_id=151643,
        )
        assert (
            generate(model, embeds, None, config)[0]
            == expected[f"generate_{name}_ids"].tolist()
        ), name
        if beams > 1:
            config.num_return_sequences = 4
            sequences, scores = generate(
                model, embeds, None, config, return_scores=True
            )
            assert (
                sequences
                == expected[f"generate_{name}_all_returned_sequences"].tolist()
            ), name
            assert (
                torch.tensor(scores) - expected[f"generate_{name}_sequences_scores"]
            ).abs().max() < 1e-4
    for name, beams in [("greedy", 1), ("beam4", 4)]:
        config = GenerationConfig(max_new_tokens=16, num_beams=beams, eos_token_id=514)
        assert (
            generate(model, embeds, None, config)[0]
            == expected[f"generate_{name}_eos_ids"].tolist()
        ), name


def test_sampling_is_seeded_and_top_k_1_is_greedy(twin):
    _, ours, embeds = twin
    sample = GenerationConfig(
        max_new_tokens=10,
        do_sample=True,
        top_k=20,
        top_p=0.9,
        temperature=0.8,
        repetition_penalty=1.05,
        eos_token_id=NEVER,
        seed=123,
        num_return_sequences=3,
    )
    assert generate(ours, embeds, None, sample) == generate(ours, embeds, None, sample)
    sample.seed = 124
    assert generate(ours, embeds, None, sample) != generate(
        ours, embeds, None, GenerationConfig(**{**sample.__dict__, "seed": 123})
    )
    greedy = generate(
        ours, embeds, None, GenerationConfig(max_new_tokens=10, eos_token_id=NEVER)
    )
    top1 = GenerationConfig(
        max_new_tokens=10, do_sample=True, top_k=1, eos_token_id=NEVER, seed=0
    )
    assert generate(ours, embeds, None, top1) == greedy
    beam_sample = GenerationConfig(
        **{**ORIGINAL_DECODING.__dict__, "max_new_tokens": 10, "seed": 9}
    )
    assert generate(ours, embeds, None, beam_sample) == generate(
        ours, embeds, None, beam_sample
    )


def chi_square_critical(df: int, z: float) -> float:
    """Wilson-Hilferty approximation of the chi-square quantile whose normal score is z."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def test_sampled_frequencies_match_softmax(twin):
    """Pearson chi-square at level 0.001 (z = 3.09) on 20,000 first-token draws at temperature 1, no filtering."""
    _, ours, embeds = twin
    with torch.no_grad():
        probs = ours(inputs_embeds=embeds)[0, -1].float().softmax(-1)
    counts = torch.zeros_like(probs)
    for seed in range(5):
        config = GenerationConfig(
            max_new_tokens=1,
            do_sample=True,
            num_return_sequences=4000,
            eos_token_id=None,
            seed=seed,
        )
        for (token,) in generate(ours, embeds, None, config):
            counts[token] += 1
    expected = probs * counts.sum()
    big = expected >= 5
    observed_bins, expected_bins = counts[big], expected[big]
    if not big.all():  # pool the rare tokens into one bin
        observed_bins = torch.cat([observed_bins, counts[~big].sum()[None]])
        expected_bins = torch.cat([expected_bins, expected[~big].sum()[None]])
    statistic = ((observed_bins - expected_bins) ** 2 / expected_bins).sum().item()
    assert statistic < chi_square_critical(len(expected_bins) - 1, z=3.09)
    # and the test can fail: the same draws against a flattened distribution are rejected
    flat = torch.full_like(expected_bins, counts.sum().item() / len(expected_bins))
    assert ((observed_bins - flat) ** 2 / flat).sum().item() > chi_square_critical(
        len(expected_bins) - 1, z=3.09
    )


def test_compiled_decoding_gives_the_eager_ids(twin):
    """torch.compile'd decode steps (inductor on the CPU) choose the same tokens as eager ones: greedy with a
    repetition penalty, beam search, seeded sampling, on a left-padded batch."""
    _, ours, _ = twin
    embeds = torch.randn(
        2, 9, ours.config.dim, generator=torch.Generator().manual_seed(12)
    )
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, :4] = 0
    configs = [
        GenerationConfig(
            max_new_tokens=10, repetition_penalty=1.05, eos_token_id=NEVER
        ),
        GenerationConfig(
            max_new_tokens=10,
            num_beams=4,
            repetition_penalty=1.05,
            num_return_sequences=2,
            eos_token_id=NEVER,
        ),
        GenerationConfig(
            max_new_tokens=10,
            do_sample=True,
            top_k=20,
            num_return_sequences=2,
            eos_token_id=NEVER,
            seed=3,
        ),
    ]
    eager = [generate(ours, embeds, mask, config) for config in configs]
    fast_decoding(ours, compile=True)
    try:
        assert [generate(ours, embeds, mask, config) for config in configs] == eager
        assert ours.fast_decode_step.step is not decode_step  # it really was compiled
    finally:
        ours.fast_decode_step = None


def test_kept_step_inputs_serve_later_calls_like_fresh_ones(twin):
    """A fast decode step keeps each shape's cache between calls (CUDA graphs read fixed addresses): a later call
    whose prompt fills fewer of the same slots must not see the earlier call's keys, and the least recently used
    shape is dropped beyond MAX_SHAPES."""
    _, ours, _ = twin
    generator = torch.Generator().manual_seed(13)
    long_prompt, short_prompt = (
        torch.randn(1, n, ours.config.dim, generator=generator) for n in (40, 9)
    )
    configs = [
        GenerationConfig(max_new_tokens=6, repetition_penalty=1.05, eos_token_id=NEVER),
        GenerationConfig(max_new_tokens=6, num_beams=3, eos_token_id=NEVER),
    ]
    eager = [
        generate(ours, prompt, None, config)
        for config in configs
        for prompt in (long_prompt, short_prompt)
    ]
    fast_decoding(ours, compile=False)
    try:
        kept = [
            generate(ours, prompt, None, config)
            for config in configs
            for prompt in (long_prompt, short_prompt)
        ]
        assert kept == eager
        shapes = ours.fast_decode_step.shapes
        # one per shape, reused by the shorter prompt
        assert list(shapes) == [
            (1, 1, 64, 64),
            (1, 3, 64, 64),
        ]
        for rows in range(2, 6):
            generate(ours, short_prompt.expand(rows, -1, -1), None, configs[0])
        assert (
            len(shapes) == ours.fast_decode_step.MAX_SHAPES
            and (1, 1, 64, 64) not in shapes
        )
    finally:
        ours.fast_decode_step = None


def poisoned_batch(dim: int):
    """Three left-padded prompts, the middle one holding a NaN (as features that overflowed would give)."""
    generator = torch.Generator().manual_seed(21)
    prompts = [torch.randn(n, dim, generator=generator) for n in (7, 5, 6)]
    prompts[1][2, 3] = float("nan")
    embeds, mask = torch.zeros(3, 7, dim), torch.zeros(3, 7, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        embeds[row, 7 - len(prompt) :], mask[row, 7 - len(prompt) :] = prompt, 1
    return embeds, mask


@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.parametrize(
    "config",
    [
        GenerationConfig(max_new_tokens=8, repetition_penalty=1.05, eos_token_id=NEVER),
        GenerationConfig(
            max_new_tokens=8, num_beams=4, num_return_sequences=2, eos_token_id=NEVER
        ),
    ],
)
def test_a_row_whose_logits_turn_nan_stops_scored_nan_and_spares_the_others(
    twin, config, fast
):
    """It decoded a row of zeros (argmax of NaN), or took the batch down: now the bad row ends with a NaN score and
    the good rows get the ids they get without it in the batch (eager and through the fast decode step)."""
    _, ours, _ = twin
    embeds, mask = poisoned_batch(ours.config.dim)
    good = [0, 2]
    if fast:
        fast_decoding(ours, compile=False)
    try:
        ids, scores = generate(ours, embeds, mask, config, return_scores=True)
        good_ids, good_scores = generate(
            ours, embeds[good], mask[good], config, return_scores=True
        )
    finally:
        ours.fast_decode_step = None
    copies = config.num_return_sequences
    rows = {item: list(range(item * copies, (item + 1) * copies)) for item in range(3)}
    # not eight zeros
    assert all(math.isnan(scores[row]) and ids[row] == [] for row in rows[1])
    assert [ids[row] for item in good for row in rows[item]] == good_ids
    assert [scores[row] for item in good for row in rows[item]] == good_scores
    assert all(math.isfinite(score) for score in good_scores)


def test_sampling_past_a_nan_row_keeps_going(twin):
    """multinomial refused the whole batch ("probability tensor contains either inf, nan") for one NaN row."""
    _, ours, _ = twin
    embeds, mask = poisoned_batch(ours.config.dim)
    config = GenerationConfig(
        max_new_tokens=8, do_sample=True, top_k=20, eos_token_id=NEVER, seed=3
    )
    ids, scores = generate(ours, embeds, mask, config, return_scores=True)
    assert math.isnan(scores[1]) and ids[1] == []
    assert all(math.isfinite(scores[row]) and len(ids[row]) == 8 for row in (0, 2))


def test_logits_turning_nan_midway_keep_the_tokens_before(twin):
    """A token whose embedding is NaN: the row stops after choosing it, keeping the tokens up to it, scored NaN."""
    _, ours, embeds = twin
    config = GenerationConfig(max_new_tokens=8, eos_token_id=NEVER)
    clean = generate(ours, embeds, None, config)[0]
    # the first token fed that is new so far
    third = next(i for i in range(2, 8) if clean[i] not in clean[:i])
    weight = ours.embed_tokens.weight
    saved = weight[clean[third]].clone()
    with torch.no_grad():
        weight[clean[third]] = float("nan")
    try:
        ids, scores = generate(ours, embeds, None, config, return_scores=True)
    finally:
        with torch.no_grad():
            weight[clean[third]] = saved
    assert ids == [clean[: third + 1]] and math.isnan(scores[0])


@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device"
)
def test_a_nan_row_through_cuda_graphs_stops_like_eager(twin):
    """The captured decode step returns the logits the eager one does: a NaN row stops there, the others go on."""
    import copy

    model = copy.deepcopy(twin[1]).cuda()
    embeds, mask = (x.cuda() for x in poisoned_batch(model.config.dim))
    config = GenerationConfig(
        max_new_tokens=8, repetition_penalty=1.05, eos_token_id=NEVER
    )
    eager = generate(model, embeds, mask, config, return_scores=True)
    fast_decoding(model, compile=False)
    graphed = generate(model, embeds, mask, config, return_scores=True)
    assert graphed[0] == eager[0] and graphed[0][1] == [] and math.isnan(graphed[1][1])
