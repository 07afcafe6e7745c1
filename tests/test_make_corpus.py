"""examples/asr_gender/make_corpus.py: a corpus built in one go, in pieces, or over an old one is the same corpus
(issue 23: a second run kept the old clips but skipped their draws, so every later voice, and its gender label,
no longer matched the audio)."""

import hashlib
import json
import importlib.util
import os
import shutil
import signal
import subprocess
import sys

import pytest

from conftest import ROOT

if shutil.which("espeak-ng") is None:
    pytest.skip(
        "espeak-ng is not installed (apt-get install espeak-ng)",
        allow_module_level=True,
    )
spec = importlib.util.spec_from_file_location(
    "make_corpus", ROOT / "examples" / "asr_gender" / "make_corpus.py"
)
make_corpus = importlib.util.module_from_spec(spec)
# by name, as its worker processes' jobs are pickled
sys.modules[spec.name] = make_corpus
spec.loader.exec_module(make_corpus)


def corpus(folder) -> dict[str, str]:
    """Every file of the corpus by name: the lists' text, the clips' sha256."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        if p.suffix == ".wav"
        else p.read_text()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def build(folder, utterances: int):
    make_corpus.main(["--out", str(folder), "--utterances", str(utterances)])


def test_a_corpus_built_in_pieces_or_over_an_old_one_is_the_corpus_built_in_one_go(
    tmp_path,
):
    build(tmp_path / "one", 6)
    once = corpus(tmp_path / "one")
    # six training sentences, each spoken by a female and by a male voice
    assert sum(name.endswith(".wav") for name in once) == 12

    build(tmp_path / "pieces", 3)  # a run cut short, then the whole
    build(tmp_path / "pieces", 6)
    assert corpus(tmp_path / "pieces") == once

    # a repeated run over an old corpus whose first clip is another voice's
    build(tmp_path / "again", 6)
    old = tmp_path / "again" / "wav" / "train00000f.wav"
    shutil.copy(tmp_path / "again" / "wav" / "train00001f.wav", old)
    # an old corpus has no records
    (tmp_path / "again" / "wav" / "train00000f.json").unlink()
    build(tmp_path / "again", 6)
    assert corpus(tmp_path / "again") == once


def test_no_training_sentence_tells_the_gender(tmp_path):
    """Each training sentence is heard in a female and in a male voice, so a model cannot learn its gender label
    from its words (one voice per sentence let the asr_gender recipe memorise sentence -> gender)."""
    lists = make_corpus.main(["--out", str(tmp_path), "--utterances", "10"])
    genders = {}
    for line in lists["train"].read_text().splitlines():
        entry = json.loads(line)
        genders.setdefault(entry["txt"].split("<")[0], set()).add(entry["gender"])
    assert len(genders) == 8
    assert all(found == {"female", "male"} for found in genders.values())
    for split in ("dev", "test"):
        assert len(lists[split].read_text().splitlines()) == 1


FORKED_AFTER_TORCH = """
import importlib.util, sys, torch
torch.nn.functional.conv1d(torch.randn(1, 16, 50_000), torch.randn(16, 16, 3))
spec = importlib.util.spec_from_file_location("make_corpus", sys.argv[1])
module = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = module
spec.loader.exec_module(module)
module.main(["--out", sys.argv[2], "--utterances", "4", "--jobs", "2"])
"""


def test_workers_forked_after_torch_has_run_do_not_hang(tmp_path):
    """The corpus' worker processes are forked: after the parent has run a parallel torch op (OpenMP's threads
    started, as in a test session or a notebook), a worker's first torch op deadlocked in libgomp. Run apart,
    so that a hang is a failure here and not a stuck test session."""
    script = ROOT / "examples" / "asr_gender" / "make_corpus.py"
    command = [sys.executable, "-c", FORKED_AFTER_TORCH, str(script), str(tmp_path)]
    child = subprocess.Popen(command, start_new_session=True, stdout=subprocess.PIPE)
    try:
        child.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.communicate()
        pytest.fail("make_corpus.py's workers hung after torch had run in the parent")
    assert child.returncode == 0
    lines = (tmp_path / "train.jsonl").read_text().splitlines()
    assert len(lines) == 8  # 4 training sentences, 2 voices each
