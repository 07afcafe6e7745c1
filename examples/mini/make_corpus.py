"""osum-mini's corpus: English speech from Debian's TTS voices for ASR, gender and SRWT, as wenet raw lists.

    python examples/mini/make_corpus.py --out data/mini [--utterances 1500]

The texts are runs of 4-12 words of English text, all among its 20,000 commonest (wordfreq), cut from
essential-generators' Markov chain over Wikipedia's prose (`pip install '.[mini-corpus]'`), split 80/10/10
as examples/asr_gender's sentences are, so no test text is heard in training. Its grammar's 250 words left
the model deaf to any other word (docs/mini.md). The voices are the ten of Debian's that Whisper
base hears best: espeak-ng's en-us+f2, en-us+m7 and en-gb-x-rp+m2, and where installed flite's slt,
awb, rms, kal16 and festival's slt (HTS), kal and ked.
A training sentence is spoken twice, by a female and by a male voice, as in examples/asr_gender.
Each clip draws, from its own seed: speed, pitch (espeak-ng), reverberation, a telephone band at 8 kHz (sox),
white noise at 15-60 dB SNR and a loudness. A third of the clips are SRWT clips: each word is spoken alone, its
silence trimmed, and the words joined with drawn pauses, so the word times in the label are exact. Labels use
OSUM's tags and forms: `text<female>` for `<TRANSCRIBE> <GENDER>`, `word<0.3,0.7>...` (0.1 s) for SRWT.
Writes train/dev/test.jsonl, and train_asr/dev_asr/test_asr.jsonl: every clip's plain transcript (align.py).
"""

import functools
import importlib.util
import json
import random
import re
import shutil
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np
import soundfile

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from osum_min.audio import load_audio  # noqa: E402  (resamples any rate to 16 kHz)
from osum_min.progress import Progress  # noqa: E402

spec = importlib.util.spec_from_file_location(
    "asr_gender_corpus", ROOT / "examples" / "asr_gender" / "make_corpus.py"
)
asr_gender = importlib.util.module_from_spec(spec)
spec.loader.exec_module(asr_gender)

RATE = 16000
# the voices Whisper base hears best (docs/mini.md, runs 7 and 8): espeak-ng's three best
# variants, flite's four, festival's three; the engine prefixes the name (none: espeak-ng)
ESPEAK_HEARD = ["en-us+f2", "en-us+m7", "en-gb-x-rp+m2"]
FLITE_VOICES = [("flite:slt", "female"), ("flite:awb", "male"), ("flite:rms", "male")]
FLITE_VOICES += [("flite:kal16", "male")]
FESTIVAL_VOICES = [("festival:cmu_us_slt_arctic_hts", "female")]
FESTIVAL_VOICES += [("festival:kal_diphone", "male"), ("festival:ked_diphone", "male")]
FESTIVAL_DIR = Path("/usr/share/festival/voices")
FESTIVAL_DONE = "osum-mini: said"
CORPUS_PACKAGES = (
    "wordfreq or essential-generators is not installed: pip install '.[mini-corpus]'"
)
TASKS = {
    "asr": "<TRANSCRIBE>",
    "sgc": "<TRANSCRIBE> <GENDER>",
    "srwt": "<TRANSCRIBE> <ALIGN>",
}


def common_words(top: int) -> list[str]:
    """English's `top` commonest words, letters only: a digit or an apostrophe is spoken in ways
    its label cannot say."""
    try:
        import wordfreq
    except ImportError:
        raise asr_gender.MissingTool(CORPUS_PACKAGES) from None
    ranked = wordfreq.top_n_list("en", 2 * top)
    return [w for w in ranked if w.isascii() and w.isalpha()][:top]


def word_runs(count: int, seed: int, top: int = 20000) -> list[str]:
    """`count` distinct runs of 4-12 words of English text, drawn in order from `seed`.

    The text is essential-generators' Markov chain over Wikipedia's prose (each word drawn from
    the two before it), so a run has English's local grammar and word frequencies: its commonest
    words are heard often enough to be learned whole (align.py), and the LLM's own knowledge of
    English can mend what the speech leaves unclear. A run is a stretch of one sentence whose
    words are all among the `top` commonest, so no name, number or symbol is spoken. Runs 4-6
    drew words independently (no grammar): even Whisper base heard those clips at 68 % WER."""
    try:
        from essential_generators import MarkovTextGenerator
    except ImportError:
        raise asr_gender.MissingTool(CORPUS_PACKAGES) from None
    common = set(common_words(top))
    chain = MarkovTextGenerator()
    random.seed(seed)  # the chain draws from the random module
    rng, runs = random.Random(seed), {}
    while len(runs) < count:
        # the text starts mid-sentence: its first piece is dropped
        for sentence in re.split(r"[.!?;:]\s+", chain.gen_text(max_len=200))[1:]:
            for run in common_stretches(sentence, common):
                if len(run) >= 4:
                    runs[" ".join(run[: rng.randint(4, 12)])] = None
    return list(runs)[:count]


def common_stretches(sentence: str, common: set[str]) -> list[list[str]]:
    """The stretches of `sentence` (lowercased, commas and quotes dropped) whose words are all
    in `common`."""
    stretches = [[]]
    for token in sentence.lower().split():
        word = token.strip(",\"'()")
        if word in common:
            stretches[-1].append(word)
        elif stretches[-1]:
            stretches.append([])
    return stretches


def voices() -> list[tuple[str, str]]:
    """The installed ones of the voices Whisper base hears best. Run 7 spoke all ten of
    espeak-ng's variants too; Whisper base heard the other seven at 58-92 % WER, and the
    adaptor trained without them heard real speech better (runs 7b, 7c)."""
    chosen = [v for v in asr_gender.VOICES if v[0] in ESPEAK_HEARD]
    if shutil.which("flite"):
        chosen += FLITE_VOICES
    installed = festival_voices()
    chosen += [v for v in FESTIVAL_VOICES if v[0].partition(":")[2] in installed]
    return chosen


def festival_voices() -> set[str]:
    """The names of festival's installed voices (none where festival is not installed)."""
    if not shutil.which("festival"):
        return set()
    return {path.name for path in FESTIVAL_DIR.glob("*/*")}


def synthesize(text: str, style: dict) -> np.ndarray:
    """One voice saying `text`, at 16 kHz, float32. flite and festival take the speed as a
    duration stretch (espeak-ng's default is 175 words a minute); only espeak-ng takes a pitch."""
    engine, _, name = style["voice"].rpartition(":")
    stretch = 175 / style["speed"]
    with tempfile.NamedTemporaryFile(suffix=".wav") as raw:
        if engine == "festival":
            festival_say(name, text, stretch, raw.name)
            return load_audio(raw.name).numpy()
        if engine == "flite":
            command = [
                "flite",
                "-voice",
                name,
                "--setf",
                f"duration_stretch={stretch:.3f}",
            ]
            command += ["-t", text, "-o", raw.name]
        else:
            speed, pitch = str(style["speed"]), str(style["pitch"])
            command = ["espeak-ng", "-v", name, "-s", speed, "-p", pitch]
            command += ["-w", raw.name, text]
        subprocess.run(command, check=True, capture_output=True)
        return load_audio(raw.name).numpy()


@functools.cache
def festival() -> subprocess.Popen:
    """This worker's festival process, started once: starting festival costs 0.25 s, a word
    then 2-40 ms (an SRWT clip says each word apart)."""
    return subprocess.Popen(
        ["festival", "--pipe"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def festival_say(voice: str, text: str, stretch: float, path: str) -> None:
    """festival's `voice` saying `text` into `path`, through the worker's kept process."""
    process = festival()
    said = text.replace("\\", " ").replace('"', " ")
    utterance = f'(utt.synth (Utterance Text "{said}"))'
    speed = f"(Parameter.set 'Duration_Stretch {stretch:.3f})"
    if voice.endswith("_hts"):  # HTS voices take a rate from hts_engine instead
        rate = f'(list "-r" {1 / stretch:.3f})'
        speed = f"(set! hts_engine_params (append hts_engine_params (list {rate})))"
    process.stdin.write(
        f"(voice_{voice}) {speed}"
        f' (utt.save.wave {utterance} "{path}" \'riff)'
        # its stderr is unbuffered: the mark says the file is whole
        f' (format stderr "{FESTIVAL_DONE}\\n")\n'
    )
    process.stdin.flush()
    # its warnings come first; after an error it goes on to the mark, with no file written
    errors = []
    for line in process.stderr:
        if line.strip() == FESTIVAL_DONE:
            break
        if "ERROR" in line:
            errors.append(line.strip())
    else:
        errors.append("festival stopped")
    if errors:
        raise RuntimeError(f"festival voice_{voice} saying {text!r}: {errors[0]}")


def trimmed(audio: np.ndarray) -> np.ndarray:
    """The span from the first to the last 10 ms frame within 35 dB of the loudest."""
    frames = audio[: len(audio) // 160 * 160].reshape(-1, 160)
    energy = 10 * np.log10((frames**2).mean(axis=1) + 1e-10)
    voiced = np.flatnonzero(energy > energy.max() - 35)
    return audio[voiced[0] * 160 : (voiced[-1] + 1) * 160]


def timed_words(words: list[str], style: dict, rng: random.Random):
    """Each word spoken alone, joined with pauses: the audio and each word's (start, end) in seconds."""
    pieces = [np.zeros(int(rng.uniform(0.1, 0.4) * RATE), np.float32)]
    times, at = [], len(pieces[0])
    for word in words:
        spoken = trimmed(synthesize(word, style))
        pause = np.zeros(int(rng.uniform(0.1, 0.5) * RATE), np.float32)
        times.append((at / RATE, (at + len(spoken)) / RATE))
        pieces += [spoken, pause]
        at += len(spoken) + len(pause)
    return np.concatenate(pieces), times


def degrade(audio: np.ndarray, style: dict, rng: np.random.Generator) -> np.ndarray:
    """Room, channel, noise and level (sox for the filters; they keep the timing)."""
    effects = []
    if style["reverb"]:
        effects += ["reverb", str(style["reverb"])]
    if style["telephone"]:
        effects += ["sinc", "300-3400", "rate", "8000", "rate", str(RATE)]
    if effects:
        audio = audio * (0.3 / (np.abs(audio).max() + 1e-9))  # headroom: reverb adds up
        with tempfile.TemporaryDirectory() as tmp:
            soundfile.write(f"{tmp}/in.wav", audio, RATE, subtype="FLOAT")
            # errors only
            sox = [
                "sox",
                "-V1",
                f"{tmp}/in.wav",
                f"{tmp}/out.wav",
                *effects,
            ]
            subprocess.run(sox, check=True)
            audio = load_audio(f"{tmp}/out.wav").numpy()[: len(audio)]
    power = float((audio**2).mean()) + 1e-10
    audio = audio + rng.standard_normal(len(audio)).astype(np.float32) * np.sqrt(
        power / 10 ** (style["snr_db"] / 10)
    )
    return audio * (10 ** (style["peak_db"] / 20) / (np.abs(audio).max() + 1e-9))


def draw_style(clip_rng: random.Random, voices: list) -> dict:
    """A clip's voice and degradations. Whisper base itself heard run 6's clips at 95 % WER with
    5 dB noise, 84 % at 10 dB, 84 % in the telephone band (one clip in five) and 79 % with reverb
    80 (docs/mini.md): noise from 15 dB, reverb to 50, one telephone clip in ten."""
    voice, gender = clip_rng.choice(voices)
    return {
        "voice": voice,
        "gender": gender,
        "speed": clip_rng.randint(130, 210),
        "pitch": clip_rng.randint(35, 65),
        "reverb": clip_rng.choice([0, 0, 20, 50]),
        "telephone": clip_rng.random() < 0.1,
        "snr_db": clip_rng.choice([15, 20, 30, 30, 60]),
        "peak_db": clip_rng.uniform(-30, -1),
        "srwt": clip_rng.random() < 1 / 3,
    }


def make_clip(text: str, style: dict, seed: str, path: Path):
    """Write the clip; the label text of each task it serves."""
    rng = random.Random(seed)
    if style["srwt"]:
        audio, times = timed_words(text.split(), style, rng)
        label = "".join(
            f"{w}<{s:.1f},{e:.1f}>" for w, (s, e) in zip(text.split(), times)
        )
        labels = {"srwt": label}
    else:
        audio = synthesize(text, style)
        labels = {"asr": text, "sgc": f"{text}<{style['gender']}>"}
    noise_rng = np.random.default_rng(zlib.crc32(seed.encode()))
    soundfile.write(path, degrade(audio, style, noise_rng), RATE, subtype="PCM_16")
    return labels


def sentence_clips(job: tuple) -> tuple[str, list[tuple[str, dict, dict]]]:
    """Sentence `index`'s split and clips, each (key, style, labels); a clip is kept when an
    earlier run made it with this style. A training sentence is spoken by a female and a male
    voice (examples/asr_gender's clip_voices: the words must not tell the gender)."""
    index, text, out, corpus_seed = job
    split, sentence_key = asr_gender.split_and_key(index)
    clips = []
    for key, choices in asr_gender.clip_voices(split, sentence_key, voices()):
        seed = f"{corpus_seed}/{key}/{text}"
        style = draw_style(random.Random(seed), choices)
        path = out / "wav" / f"{key}.wav"
        record = out / "wav" / f"{key}.json"
        kept = record.exists() and json.loads(record.read_text())["style"] == style
        if kept and path.exists():
            labels = json.loads(record.read_text())["labels"]
        else:
            labels = make_clip(text, style, seed, path)
            record.write_text(json.dumps({"style": style, "labels": labels}))
        clips.append((key, style, labels))
    return split, clips


def list_lines(key: str, style: dict, labels: dict) -> list[dict]:
    """A clip's list lines, one per task it serves."""
    return [
        {
            "key": f"{key}-{task}",
            "wav": f"wav/{key}.wav",
            "txt": label,
            "task": TASKS[task],
            "gender": style["gender"],
        }
        for task, label in labels.items()
    ]


def plain(line: dict) -> dict:
    """A list line as a plain-transcript line of the same clip (SRWT's times dropped)."""
    words = re.sub(r"<[^>]*>", " ", line["txt"]).split()
    return {**line, "txt": " ".join(words), "task": TASKS["asr"]}


def main(argv=None) -> dict[str, Path]:
    args, texts = asr_gender.corpus_args(argv, __doc__, 1500, draw=word_runs)
    (args.out / "wav").mkdir(parents=True, exist_ok=True)
    lists = {"train": [], "dev": [], "test": []}
    jobs = [(i, text, args.out, args.seed) for i, text in enumerate(texts)]
    with (
        Progress(len(texts), "synthesizing") as bar,
        asr_gender.worker_pool(args.jobs) as pool,
    ):
        # in corpus order, whichever worker made the clips
        for split, clips in pool.map(sentence_clips, jobs, chunksize=4):
            for key, style, labels in clips:
                lists[split] += list_lines(key, style, labels)
            bar.update()
    # and each clip's plain transcript, SRWT clips' too, for align.py's CTC
    for split in list(lists):
        lists[f"{split}_asr"] = [
            plain(line) for line in lists[split] if line["task"] != TASKS["sgc"]
        ]
    paths = {}
    for split, lines in lists.items():
        paths[split] = args.out / f"{split}.jsonl"
        paths[split].write_text("".join(json.dumps(line) + "\n" for line in lines))
    counts = {
        s: {t: sum(line["task"] == tag for line in v) for t, tag in TASKS.items()}
        for s, v in lists.items()
    }
    print(json.dumps(counts))
    return paths


if __name__ == "__main__":
    try:
        main()
    except asr_gender.MissingTool as err:
        print(f"make_corpus.py: error: {err}", file=sys.stderr)
        sys.exit(2)
