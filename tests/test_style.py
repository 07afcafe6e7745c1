"""The house style, checked as CI checks it: ruff's line-length rule and formatting ([tool.ruff] in
pyproject.toml), and lines near the density of the codebases this one follows."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [
    "osum_min",
    "tests",
    "bench",
    "examples",
    "convert.py",
    "infer.py",
    "train.py",
    "eval.py",
]


def ruff(*args):
    if (
        shutil.which("ruff") is None
        and not (Path(sys.executable).parent / "ruff").exists()
    ):
        pytest.skip("ruff is not installed (pip install -e '.[test]')")
    command = [sys.executable, "-m", "ruff", *args, *SOURCES]
    return subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_no_line_past_the_limit():
    result = ruff("check")
    assert result.returncode == 0, result.stdout[-3000:]


def test_formatted():
    result = ruff("format", "--check")
    assert result.returncode == 0, result.stdout[-3000:]


def test_characters_per_line_near_the_anchors():
    """whisper, litgpt, nanoGPT and gpt-fast read at 44-46 characters per non-blank line."""
    lines = [
        line
        for path in (ROOT / "osum_min").rglob("*.py")
        for line in path.read_text().splitlines()
        if line.strip()
    ]
    mean = sum(map(len, lines)) / len(lines)
    assert mean <= 46, f"{mean:.1f} characters per non-blank line in osum_min/"
