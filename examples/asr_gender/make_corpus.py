"""Synthesize a small English ASR + gender corpus with espeak-ng, as wenet raw jsonl lists.

    python examples/asr_gender/make_corpus.py --out data/asr_gender [--utterances 3000]

Sentences come from a template grammar over ~250 words; each is spoken by one of 10 espeak-ng voice variants (5
female, 5 male) at a random speed and pitch. Sentences are split 80/10/10 into train/dev/test, so no test text is
ever heard in training; the voices are shared (ten variants are too few to hold some out and still cover both
genders). A training sentence is spoken twice, by a female and by a male voice (`clip_voices`: its words must
not tell the gender). Every list gives each clip once, with the gender task (`<TRANSCRIBE> <GENDER>`, the
label appended as `<female>`/`<male>`). A plain `<TRANSCRIBE>` copy of each training clip halved the
gender labels a step sees, and on one corpus draw the model then called 23 of 300 test clips, all of
them male voices pitched high, female (docs/experiments.md).

A second run over the same folder (resumed, repeated, or built in pieces) keeps a clip only when `wav/KEY.json`
records the same text, voice, speed and pitch as this run draws for it, so any run gives the corpus one run gives.
"""

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import soundfile
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from osum_min.audio import load_audio  # noqa: E402  (resamples espeak's 22.05 kHz to 16 kHz)
from osum_min.progress import Progress  # noqa: E402

# espeak-ng ignores a +variant on "en-gb" (it resolves to a voice without variants) and speaks its default male
# voice: the British voices here are named by dialect (en-gb-x-rp, en-029, en-gb-scotland), where variants apply.
VOICES = [
    ("en-us+f1", "female"),
    ("en-us+f2", "female"),
    ("en-gb-x-rp+f3", "female"),
    ("en-us+f4", "female"),
    ("en-029+f5", "female"),
    ("en-us+m1", "male"),
    ("en-gb-x-rp+m2", "male"),
    ("en-us+m3", "male"),
    ("en-gb-scotland+m4", "male"),
    ("en-us+m7", "male"),
]
WORDS = {
    "adjective": "big small red green blue old young happy quiet loud bright dark warm cold soft hard quick slow "
    "tall short new clean busy lazy brave calm gentle heavy light sweet bitter empty full famous "
    "golden silver wooden little ancient friendly hungry noisy".split(),
    "noun": "dog cat bird fish horse farmer teacher doctor child girl boy king queen river mountain garden house "
    "city village forest road train boat ship car window door table chair book letter song story apple "
    "bread cheese coffee water river stone flower tree cloud rain storm moon star sun market school "
    "kitchen island bridge castle tower lamp clock pencil basket".split(),
    "verb": "sees finds likes paints carries follows watches builds opens closes cleans brings holds helps visits "
    "draws keeps loves moves pushes pulls reads writes sells buys".split(),
    "place": "near the river|behind the house|in the garden|on the hill|under the bridge|at the market|"
    "in the morning|after dinner|before the storm|by the window|across the road|inside the castle".split(
        "|"
    ),
    "number": "two three four five six seven eight nine ten twelve twenty".split(),
}
TEMPLATES = [
    "the {adjective} {noun} {verb} the {noun}",
    "the {adjective} {noun} {verb} a {adjective} {noun} {place}",
    "{number} {adjective} {noun}s wait {place}",
    "my {noun} {verb} the {adjective} {noun}",
    "a {noun} {verb} {number} {noun}s {place}",
    "the {noun} is {adjective} {place}",
]


def sentence(rng: random.Random) -> str:
    template = rng.choice(TEMPLATES)
    while "{" in template:
        start = template.index("{")
        end = template.index("}", start)
        template = (
            template[:start]
            + rng.choice(WORDS[template[start + 1 : end]])
            + template[end + 1 :]
        )
    return template


def sentences(count: int, seed: int) -> list[str]:
    """`count` distinct sentences of the grammar, drawn in order from `seed`."""
    rng, texts = random.Random(seed), []
    while len(texts) < count:
        text = sentence(rng)
        if text not in texts:
            texts.append(text)
    return texts


def split_and_key(index: int) -> tuple[str, str]:
    """Sentences split 80/10/10 by position, so no dev or test sentence is ever heard in training."""
    split = "train" if index % 10 < 8 else "dev" if index % 10 == 8 else "test"
    return split, f"{split}{index:05d}"


INSTALL = "apt-get install espeak-ng"  # the recipe's one system tool (run.sh's header)


class MissingTool(RuntimeError):
    """A system tool the recipe needs: one line naming the install command."""


def speak(text: str, voice: str, speed: int, pitch: int, path: Path) -> None:
    with tempfile.NamedTemporaryFile(suffix=".wav") as raw:
        command = [
            "espeak-ng",
            "-v",
            voice,
            "-s",
            str(speed),
            "-p",
            str(pitch),
            "-w",
            raw.name,
            text,
        ]
        try:
            subprocess.run(command, check=True, capture_output=True)
        except FileNotFoundError:
            raise MissingTool(f"espeak-ng is not installed: {INSTALL}") from None
        except subprocess.CalledProcessError as err:
            said = (
                " ".join(err.stderr.decode("utf-8", "replace").split())
                or f"exit code {err.returncode}"
            )
            raise MissingTool(
                f"espeak-ng -v {voice} failed ({said}): is it installed whole? {INSTALL}"
            ) from None
        soundfile.write(path, load_audio(raw.name).numpy(), 16000, subtype="PCM_16")


def corpus_args(
    argv, doc: str, utterances: int, draw=sentences
) -> tuple[argparse.Namespace, list[str]]:
    """--out, --utterances, --seed, --jobs; and the sentences `draw(count, seed)` gives."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--utterances", type=int, default=utterances)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--jobs",
        type=int,
        default=os.cpu_count(),
        help="clips made at once (default: one per core)",
    )
    args = parser.parse_args(argv)
    # before the folder is made or anything is drawn
    if shutil.which("espeak-ng") is None:
        raise MissingTool(f"espeak-ng is not installed: {INSTALL}")
    return args, draw(args.utterances, args.seed)


def worker_pool(jobs: int) -> ProcessPoolExecutor:
    """Processes that each use one torch thread: a worker forked from a process whose OpenMP threads
    have run (a test, a notebook) deadlocks in its first parallel torch op otherwise."""
    return ProcessPoolExecutor(jobs, initializer=torch.set_num_threads, initargs=(1,))


def clip_voices(split: str, key: str, voices=VOICES) -> list[tuple[str, list]]:
    """A training sentence is spoken twice, by a female and by a male voice, so its words never tell the
    gender: a model that memorises sentence -> gender (one voice per sentence) stops listening for it. A dev
    or test sentence is spoken once, by any voice."""
    if split != "train":
        return [(key, voices)]
    return [
        (f"{key}{gender[0]}", [v for v in voices if v[1] == gender])
        for gender in ("female", "male")
    ]


def make_clip(out: Path, key: str, text: str, voices: list, seed: int) -> dict:
    """wav/KEY.wav (kept when an earlier run drew the same) and its list entry."""
    # each clip's voice, speed and pitch come from its own seed: they (and the gender label beside them) never
    # depend on which clips an earlier, interrupted or smaller run left in the folder
    clip_rng = random.Random(f"{seed}/{key}/{text}")
    voice, gender = clip_rng.choice(voices)
    spoken = {
        "text": text,
        "voice": voice,
        "speed": clip_rng.randint(130, 210),
        "pitch": clip_rng.randint(35, 65),
    }
    path, record = out / "wav" / f"{key}.wav", out / "wav" / f"{key}.json"
    if not (
        path.exists() and record.exists() and json.loads(record.read_text()) == spoken
    ):
        speak(text, voice, speed=spoken["speed"], pitch=spoken["pitch"], path=path)
        # after the audio: a clip cut short by a kill is spoken again
        record.write_text(json.dumps(spoken))
    return {"key": key, "wav": f"wav/{key}.wav", "txt": text, "gender": gender}


def sentence_clips(job: tuple) -> tuple[str, list[dict]]:
    """Sentence `index`'s split and its clips' list entries."""
    index, text, out, seed = job
    split, key = split_and_key(index)
    clips = [
        make_clip(out, clip_key, text, voices, seed)
        for clip_key, voices in clip_voices(split, key)
    ]
    return split, clips


def main(argv=None) -> dict[str, Path]:
    args, texts = corpus_args(argv, __doc__, 3000)
    (args.out / "wav").mkdir(parents=True, exist_ok=True)
    splits = {"train": [], "dev": [], "test": []}
    jobs = [(i, text, args.out, args.seed) for i, text in enumerate(texts)]
    with (
        Progress(len(texts), "synthesizing") as bar,
        worker_pool(args.jobs) as pool,
    ):
        # in corpus order, whichever worker spoke the sentence
        for split, clips in pool.map(sentence_clips, jobs, chunksize=4):
            splits[split] += clips
            bar.update()
    lists = {}
    for split, clips in splits.items():
        lines = [
            {
                **clip,
                "task": "<TRANSCRIBE> <GENDER>",
                "txt": f"{clip['txt']}<{clip['gender']}>",
            }
            for clip in clips
        ]
        lists[split] = args.out / f"{split}.jsonl"
        lists[split].write_text("".join(json.dumps(line) + "\n" for line in lines))
    print(" ".join(f"{split}: {len(clips)} clips" for split, clips in splits.items()))
    return lists


if __name__ == "__main__":
    try:
        main()
    except MissingTool as err:
        print(f"make_corpus.py: error: {err}", file=sys.stderr)
        sys.exit(2)
