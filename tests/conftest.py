"""Shared test fixtures: the fixture_a reference files and fixture weights converted once per session."""

import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
FIXTURE_A = FIXTURES / "fixture_a"
# convert.py, infer.py and train.py live at the repository root
sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session")
def expected() -> dict[str, torch.Tensor]:
    return load_file(FIXTURE_A / "expected.safetensors")


@pytest.fixture(scope="session")
def fixture_weights(tmp_path_factory) -> Path:
    """fixture_a's infer.pt converted by convert.py into our format (float32, kept)."""
    import convert

    out = tmp_path_factory.mktemp("fixture_a_weights")
    code = convert.main(
        [
            str(FIXTURE_A / "infer.pt"),
            "--config",
            str(FIXTURE_A / "osum_config.json"),
            "--out",
            str(out),
        ]
    )
    assert code == 0
    return out
