"""Shared test fixtures: the fixture_a reference files and fixture weights converted once per session."""
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from osum_min.tokenizer import AddedToken, Tokenizer

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
FIXTURE_A = FIXTURES / "fixture_a"
sys.path.insert(0, str(ROOT))  # convert.py, infer.py and train.py live at the repository root


@pytest.fixture(scope="session")
def expected() -> dict[str, torch.Tensor]:
    return load_file(FIXTURE_A / "expected.safetensors")


@pytest.fixture(scope="session")
def fixture_weights(tmp_path_factory) -> Path:
    """fixture_a's infer.pt converted by convert.py into our format (float32, kept)."""
    import convert

    out = tmp_path_factory.mktemp("fixture_a_weights")
    code = convert.main([str(FIXTURE_A / "infer.pt"), "--config", str(FIXTURE_A / "osum_config.json"),
                         "--out", str(out)])
    assert code == 0
    return out


@pytest.fixture(scope="session")
def weights_with_tokenizer(fixture_weights, tmp_path_factory):
    """The fixture weights plus a stand-in byte-level tokenizer sized to the tiny vocabulary (eod = 1000)."""
    out = tmp_path_factory.mktemp("fixture_a_tokenizer")
    for path in fixture_weights.iterdir():
        shutil.copy(path, out / path.name)
    symbols = b"abcdefghijklmnopqrstuvwxyz0123456789 "
    ranks = {bytes([b]): b for b in range(256)}
    for pair in (bytes([x, y]) for x in symbols for y in symbols):
        if len(ranks) < 1000:
            ranks[pair] = len(ranks)
    added = [AddedToken("<|endoftext|>", 1000, True)]
    added += [AddedToken(f"<|extra_{i}|>", 1000 + i, True) for i in range(1, 24)]
    Tokenizer(ranks, added).save(out)
    return out
