"""The public test sets by name: one reader per set's official layout, each with the task and scoring its tables use.

A reader takes the folder (or file) the set was unpacked to and returns its subsets: a named list of utterances (key,
audio, reference) with the defaults that score it (task, prompt, metric, protocol, language). A layout that is not the
one expected is refused with one line naming the file looked for (`LayoutError`); a clip named by the layout but
missing is left to the decoder, which reports it and goes on. Where each set comes from: docs/evaluation.md.
"""

import csv
import io
import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..data.formats import resolve_listed_path
from ..files import MAX_LIST_BYTES, FileError, parse_json, printable, read_text
from ..text.tasks import TASKS, TASKS_BY_TAG

MAX_META_BYTES = 8 * 2**30  # WenetSpeech.json is about 1 GB
QWEN2_AUDIO_PROMPT = re.compile(r"^(<\|audio_bos\|><\|AUDIO\|><\|audio_eos\|>)")


class LayoutError(ValueError):
    """The folder is not the set's layout: one line naming the file the reader looked for."""


@dataclass(frozen=True)
class Defaults:
    """How a subset is decoded and scored; eval.py's flags override any field."""

    task: str = "asr"  # a name of tasks.TASKS
    prompt: str | None = None  # free prompt text instead of the task's prompt
    metric: str = "wer"  # wer, cer, acc or bleu (osum_min.eval.scoring)
    protocol: str = "osum"  # osum (compute-wer.py's rules) or qwen2-audio
    language: str | None = None  # what the qwen2-audio protocol's normaliser follows
    bleu_tokenize: str | None = None  # 13a or zh


@dataclass
class Utterance:
    key: str
    audio: str  # a path
    reference: str
    start: float | None = None  # seconds, for a segment of a longer file
    end: float | None = None
    prompt: str | None = None  # this line's own prompt (Qwen2-Audio's jsonl)


@dataclass
class Subset:
    """One row of the table: a dataset's split, its utterances and how they are scored."""

    name: str
    defaults: Defaults
    utterances: list[Utterance] = field(default_factory=list)


def _need(path: Path) -> Path:
    if not path.is_file():
        raise LayoutError(f"{path}: not found (the set's layout needs it)")
    return path


def _lines(path: Path, keep_blank: bool = False) -> list[str]:
    try:
        lines = read_text(_need(path), "transcript", MAX_LIST_BYTES).splitlines()
    except FileError as err:
        raise LayoutError(str(err)) from None
    return lines if keep_blank else [line for line in lines if line.strip()]


def _key_text(line: str) -> tuple[str, str]:
    """`KEY TEXT` with a space or a tab after the key (kaldi files use either)."""
    key, *text = line.split(maxsplit=1)
    return key, text[0].strip() if text else ""


def _key_texts(path: Path) -> dict[str, str]:
    """A kaldi `KEY TEXT` file as key -> text; a key given twice is refused naming both lines."""
    texts, lines = {}, {}
    for number, line in enumerate(_lines(path, keep_blank=True), 1):
        if not line.strip():
            continue
        key, text = _key_text(line)
        if key in lines:
            raise LayoutError(
                f"{path}:{number}: key {key!r} is given twice (also line {lines[key]})"
            )
        texts[key], lines[key] = text, number
    return texts


def _table(path: Path, columns: tuple[str, ...], **dialect) -> list[dict]:
    """A CSV/TSV with these columns, read through the input layer (UTF-8, bounded: one line naming the file)."""
    try:
        text = read_text(_need(path), "table", MAX_LIST_BYTES)
    except FileError as err:
        raise LayoutError(str(err)) from None
    rows = csv.DictReader(io.StringIO(text, newline=""), **dialect)
    missing = [c for c in columns if c not in (rows.fieldnames or [])]
    if missing:
        raise LayoutError(
            f"{path}: no column {', '.join(missing)} (columns: {', '.join(rows.fieldnames or [])})"
        )
    table = []
    try:
        for row in rows:
            if not all(isinstance(row[c], str) for c in columns):
                raise LayoutError(
                    f"{path}:{rows.line_num}: fewer fields than the header's columns"
                )
            table.append(row)
    except csv.Error as err:
        raise LayoutError(f"{path}:{rows.line_num}: not a table line ({err})") from None
    return table


def _tsv(path: Path, columns: tuple[str, ...]) -> list[dict]:
    return _table(path, columns, delimiter="\t", quoting=csv.QUOTE_NONE)


def _json_rows(path: Path, fields: tuple[str, ...], shape: str):
    """(line number, row) of a JSON-lines list whose rows hold these text fields; any other line (bad JSON, nested
    past the recursion limit, a field missing or not text) is refused naming the file, line and field."""
    for number, line in enumerate(_lines(path, keep_blank=True), 1):
        if not line.strip():
            continue
        try:
            row = parse_json(line, f"{path}:{number}")
        except FileError as err:
            raise LayoutError(f"{err.path}: not {shape} ({err.problem})") from None
        if not isinstance(row, dict):
            raise LayoutError(f"{path}:{number}: not {shape}")
        for name in fields:
            if not isinstance(row.get(name), str):
                raise LayoutError(
                    f"{path}:{number}: {name!r} is {json.dumps(row.get(name))[:40]}, not text ({shape})"
                )
        yield (
            number,
            {
                **row,
                **{
                    name: printable(row[name])
                    for name in fields
                    if name not in ("wav", "audio")
                },
            },
        )


def librispeech(root: Path) -> list[Subset]:
    """LibriSpeech/SPLIT/SPEAKER/CHAPTER/SPEAKER-CHAPTER.trans.txt, `KEY TEXT` lines, KEY.flac beside it."""
    transcripts = sorted(root.glob("*/*/*.trans.txt"))
    if not transcripts:
        raise LayoutError(
            f"{root}/SPEAKER/CHAPTER/SPEAKER-CHAPTER.trans.txt: not found (give a split folder such as "
            f"LibriSpeech/test-clean)"
        )
    utterances = [
        Utterance(key, str(path.parent / f"{key}.flac"), text)
        for path in transcripts
        for key, text in map(_key_text, _lines(path))
    ]
    return [Subset(root.name, Defaults(language="en"), utterances)]


def aishell1(root: Path) -> list[Subset]:
    """data_aishell: wav/test/SPEAKER/KEY.wav and transcript/aishell_transcript_v0.8.txt (word-segmented text, the
    spaces dropped); the transcript's keys with a clip under wav/test are the test set."""
    transcript = _key_texts(root / "transcript" / "aishell_transcript_v0.8.txt")
    clips = sorted((root / "wav" / "test").glob("*/*.wav"))
    if not clips:
        raise LayoutError(
            f"{root}/wav/test/SPEAKER/*.wav: not found (unpack wav/SPEAKER.tar.gz in wav/)"
        )
    utterances = [
        Utterance(clip.stem, str(clip), transcript[clip.stem].replace(" ", ""))
        for clip in clips
        if clip.stem in transcript
    ]
    return [Subset("test", Defaults(language="zh"), utterances)]


def _scp(root: Path, name: str) -> Subset:
    """A kaldi-style folder: wav.scp (`KEY PATH`, relative to the folder) and trans.txt (`KEY TEXT`)."""
    texts = _key_texts(root / "trans.txt")
    utterances = [
        Utterance(key, str(root / path), texts[key].replace(" ", ""))
        for key, path in _key_texts(root / "wav.scp").items()
        if key in texts
    ]
    return Subset(name, Defaults(language="zh"), utterances)


def aishell2(root: Path) -> list[Subset]:
    """AISHELL-2 TEST/{iOS,Android,Mic}/test: wav.scp and trans.txt; DATA_DIR is one device's folder or `test`."""
    folder = root / "test" if (root / "test" / "wav.scp").is_file() else root
    device = root.name if folder != root else root.parent.name
    return [_scp(folder, f"test-{device.lower()}")]


WENETSPEECH_SUBSETS = {"TEST_NET": "test-net", "TEST_MEETING": "test-meeting"}


def wenetspeech(root: Path) -> list[Subset]:
    """The official WenetSpeech.json: audios [{"path": opus file, "segments": [{"sid", "begin_time", "end_time",
    "text", "subsets"}]}]; the segments tagged TEST_NET and TEST_MEETING are the two test sets."""
    meta = _need(root / "WenetSpeech.json")
    try:
        audios = parse_json(read_text(meta, "WenetSpeech meta", MAX_META_BYTES), meta)[
            "audios"
        ]
    except FileError as err:
        raise LayoutError(str(err)) from None
    except (KeyError, TypeError):
        raise LayoutError(
            f'{meta}: not WenetSpeech\'s meta (a JSON object with "audios")'
        ) from None
    subsets = {
        tag: Subset(name, Defaults(language="zh"))
        for tag, name in WENETSPEECH_SUBSETS.items()
    }
    for where, audio, segment in _segments(meta, audios):
        tags = segment.get("subsets", [])
        if not isinstance(tags, list) or not all(isinstance(tag, str) for tag in tags):
            raise LayoutError(f'{meta}: {where}: "subsets" is not a list of names')
        for tag in set(tags) & set(subsets):
            for name, kinds in (
                ("sid", str),
                ("text", str),
                ("begin_time", (int, float)),
                ("end_time", (int, float)),
            ):
                if not isinstance(segment.get(name), kinds) or isinstance(
                    segment[name], bool
                ):
                    raise LayoutError(
                        f"{meta}: {where}: {name!r} is {json.dumps(segment.get(name))[:40]}, not "
                        f"{'text' if kinds is str else 'seconds'}"
                    )
            subsets[tag].utterances.append(
                Utterance(
                    printable(segment["sid"]),
                    str(root / audio["path"]),
                    printable(segment["text"]),
                    segment["begin_time"],
                    segment["end_time"],
                )
            )
    return [subset for subset in subsets.values() if subset.utterances]


def _segments(meta: Path, audios):
    """(where, audio, segment) of WenetSpeech's meta, each level checked for its type."""
    if not isinstance(audios, list):
        raise LayoutError(f'{meta}: "audios" is {type(audios).__name__}, not a list')
    for index, audio in enumerate(audios):
        where = f"audios[{index}]"
        if not isinstance(audio, dict) or not isinstance(audio.get("path"), str):
            raise LayoutError(f'{meta}: {where}: not an object with a "path"')
        segments = audio.get("segments", [])
        if not isinstance(segments, list):
            raise LayoutError(f'{meta}: {where}: "segments" is not a list')
        for number, segment in enumerate(segments):
            if not isinstance(segment, dict):
                raise LayoutError(f"{meta}: {where}.segments[{number}]: not an object")
            yield f"{where}.segments[{number}]", audio, segment


def common_voice(root: Path) -> list[Subset]:
    """cv-corpus-N/LANG: test.tsv (`path`, `sentence`) and clips/*.mp3; the language is the folder's name."""
    rows = _tsv(root / "test.tsv", ("path", "sentence"))
    language = root.name.split("-")[0].lower()  # zh-CN -> zh
    utterances = [
        Utterance(
            Path(row["path"]).stem, str(root / "clips" / row["path"]), row["sentence"]
        )
        for row in rows
    ]
    return [
        Subset(
            f"test-{root.name}",
            Defaults(protocol="qwen2-audio", language=language),
            utterances,
        )
    ]


FLEURS_LANGUAGES = {
    "cmn_hans_cn": "zh",
    "yue_hant_hk": "yue",
    "en_us": "en",
    "fr_fr": "fr",
}


def fleurs(root: Path) -> list[Subset]:
    """FLEURS LANG/: test.tsv (no header: id, file name, raw transcription, normalised transcription, ...) and
    audio/test/*.wav. The raw transcription is the reference, as Qwen2-Audio scores it with its own normaliser."""
    utterances = []
    for number, line in enumerate(_lines(root / "test.tsv"), 1):
        columns = line.split("\t")
        if len(columns) < 4:
            raise LayoutError(
                f"{root / 'test.tsv'}:{number}: not FLEURS' tsv (id, file, raw and normalised text)"
            )
        utterances.append(
            Utterance(
                Path(columns[1]).stem,
                str(root / "audio" / "test" / columns[1]),
                columns[2],
            )
        )
    language = FLEURS_LANGUAGES.get(root.name, root.name.split("_")[0])
    return [
        Subset(
            f"test-{root.name}",
            Defaults(protocol="qwen2-audio", language=language),
            utterances,
        )
    ]


LANGUAGE_NAMES = {
    "en": "English",
    "de": "German",
    "zh": "Chinese",
    "ja": "Japanese",
    "fr": "French",
    "es": "Spanish",
}


def covost2(root: Path) -> list[Subset]:
    """CoVoST 2: covost_v2.SRC_TGT.tsv (`path`, `translation`, `split`) and the Common Voice clips in clips/; the
    rows of split `test`, scored with BLEU (tokenizer zh for Chinese targets, else 13a)."""
    tables = sorted(root.glob("covost_v2.*_*.tsv"))
    if not tables:
        raise LayoutError(f"{root}/covost_v2.SRC_TGT.tsv: not found")
    subsets = []
    for table in tables:
        source, target = (
            part.split("-")[0] for part in table.name.split(".")[1].split("_")
        )
        rows = [
            row
            for row in _tsv(table, ("path", "translation", "split"))
            if row["split"] == "test"
        ]
        prompt = f"Translate the speech into {LANGUAGE_NAMES.get(target, target)}."
        defaults = Defaults(
            prompt=prompt,
            metric="bleu",
            protocol="qwen2-audio",
            language=target,
            bleu_tokenize="zh" if target == "zh" else "13a",
        )
        subsets.append(
            Subset(
                f"{source}-{target}",
                defaults,
                [
                    Utterance(
                        Path(row["path"]).stem,
                        str(root / "clips" / row["path"]),
                        row["translation"],
                    )
                    for row in rows
                ],
            )
        )
    return subsets


# MELD's and VocalSound's labels in OSUM's label sets (tasks.LABEL_SETS).
MELD_EMOTIONS = {
    "neutral": "neutral",
    "joy": "happy",
    "sadness": "sad",
    "anger": "anger",
    "surprise": "surprise",
    "fear": "fear",
    "disgust": "disgust",
}
VOCALSOUND_EVENTS = {
    "laughter": "laugh",
    "sigh": "sigh",
    "cough": "cough",
    "throatclearing": "throat clearing",
    "sneeze": "sneeze",
    "sniff": "other",
}


def meld(root: Path) -> list[Subset]:
    """MELD.Raw: test_sent_emo.csv (`Dialogue_ID`, `Utterance_ID`, `Emotion`) and wav/diaD_uttU.wav, the audio of
    output_repeated_splits_test/diaD_uttU.mp4 (docs/evaluation.md has the ffmpeg command)."""
    rows = _table(
        root / "test_sent_emo.csv", ("Dialogue_ID", "Utterance_ID", "Emotion")
    )
    keys = [
        (f"dia{row['Dialogue_ID']}_utt{row['Utterance_ID']}", row["Emotion"].lower())
        for row in rows
    ]
    utterances = [
        Utterance(
            key, str(root / "wav" / f"{key}.wav"), MELD_EMOTIONS.get(emotion, emotion)
        )
        for key, emotion in keys
    ]
    return [Subset("test", Defaults(task="ser", metric="acc"), utterances)]


def vocalsound(root: Path) -> list[Subset]:
    """VocalSound: audio_16k/SPEAKER_N_LABEL.wav, the label in the name."""
    clips = sorted((root / "audio_16k").glob("*.wav"))
    if not clips:
        raise LayoutError(f"{root}/audio_16k/*.wav: not found")
    utterances = [
        Utterance(clip.stem, str(clip), VOCALSOUND_EVENTS.get(label, label))
        for clip in clips
        for label in [clip.stem.rsplit("_", 1)[-1].lower()]
    ]
    return [Subset("test", Defaults(task="ved", metric="acc"), utterances)]


LANGUAGE_TOKEN = re.compile(r"(?:^|_)(en|zh|yue|fr|de|ja|es|it)(?:_|$)")


def source_defaults(source: str, list_name: str) -> Defaults:
    """How Qwen2-Audio's eval_audio scripts score a `source` of the list `list_name` (`cv15_asr_en_eval`, ...): the
    language is the list's (its ds_collections), BLEU for CoVoST2 (zh tokens for a Chinese target), exact match for
    MELD and VocalSound."""
    name = source.lower()
    if "covost" in name:
        target = name.rsplit("_", 1)[-1].split("-")[0]
        return Defaults(
            metric="bleu",
            protocol="qwen2-audio",
            language=target,
            bleu_tokenize="zh" if target == "zh" else "13a",
        )
    if "meld" in name or "vocalsound" in name:
        return Defaults(metric="acc", protocol="qwen2-audio")
    both = f"{list_name} {name}".lower()
    token = LANGUAGE_TOKEN.search(list_name.lower()) or LANGUAGE_TOKEN.search(name)
    language = (
        "en"
        if "librispeech" in both
        else "zh"
        if "aishell" in both
        else token.group(1)
        if token
        else None
    )
    return Defaults(protocol="qwen2-audio", language=language)


def qwen2_audio_jsonl(path: Path) -> list[Subset]:
    """Qwen2-Audio's eval jsonl (eval_audio/evaluate_*.py): `{"audio", "prompt", "source", "gt"}` a line (a relative
    audio path from the list's folder where it is there, else as written), each line decoded with its own prompt
    (Qwen's scripts put the audio tokens before it; a prompt that carries them has them removed) and scored per
    `source`."""
    subsets = {}
    shape = 'a Qwen2-Audio eval line {"audio", "prompt", "source", "gt"}'
    for number, row in _json_rows(path, ("audio", "prompt", "source", "gt"), shape):
        audio, prompt, source, reference = (
            row["audio"],
            row["prompt"],
            row["source"],
            row["gt"],
        )
        subset = subsets.setdefault(
            source, Subset(source, source_defaults(source, path.stem))
        )
        subset.utterances.append(
            Utterance(
                f"{source}-{number:06d}",
                resolve_listed_path(audio, path.parent),
                reference,
                prompt=QWEN2_AUDIO_PROMPT.sub("", prompt),
            )
        )
    return list(subsets.values())


def wenet_jsonl(path: Path) -> list[Subset]:
    """A wenet raw list `{"key", "wav", "txt", "task"}` with OSUM's task tags (`<TRANSCRIBE> <EMOTION>`, ...): one
    subset per task; labelled tasks are scored by their first tag (compute-acc.py), the others by WER."""
    subsets = {}
    shape = 'a wenet list line {"key", "wav", "txt", "task"}'
    for number, row in _json_rows(path, ("key", "wav", "txt"), shape):
        key, wav, text = row["key"], row["wav"], row["txt"]
        tag = " ".join(str(row.get("task", "<TRANSCRIBE>")).split())
        task = (
            TASKS_BY_TAG[tag].name
            if tag in TASKS_BY_TAG
            else str(row.get("task", "asr"))
        )
        if task not in TASKS:
            raise LayoutError(
                f"{path}:{number}: task {row.get('task')!r} is none of OSUM's tags or task names"
            )
        metric = "acc" if TASKS[task].labels and task != "asr" else "wer"
        subset = subsets.setdefault(
            task, Subset(task, Defaults(task=task, metric=metric))
        )
        subset.utterances.append(
            Utterance(key, resolve_listed_path(wav, path.parent), text)
        )
    return list(subsets.values())


READERS = {
    "librispeech": librispeech,
    "aishell1": aishell1,
    "aishell2": aishell2,
    "wenetspeech": wenetspeech,
    "commonvoice": common_voice,
    "fleurs": fleurs,
    "covost2": covost2,
    "meld": meld,
    "vocalsound": vocalsound,
    "qwen2-audio": qwen2_audio_jsonl,
    "wenet": wenet_jsonl,
}


def _refuse_duplicates(data: Path, subset: Subset) -> None:
    """A key twice in a subset (a line given twice, a speaker folder reachable twice through a symbolic link) would
    score one utterance twice and one reference over another: refused, naming the key and both places."""
    seen = {}
    for utterance in subset.utterances:
        if utterance.key in seen:
            first = seen[utterance.key].audio
            places = (
                f"{first} and {utterance.audio}"
                if first != utterance.audio
                else f"both {first}"
            )
            raise LayoutError(
                f"{data}: {subset.name}: key {utterance.key!r} is there twice ({places}): one utterance "
                "would be scored twice"
            )
        seen[utterance.key] = utterance


def read_benchmark(bench: str, data: Path, **overrides) -> list[Subset]:
    """The subsets of `bench` under `data`, with the flags given (not None) overriding each subset's defaults."""
    if not data.exists():
        raise LayoutError(f"{data}: no such file or directory")
    subsets = READERS[bench](data)
    for subset in subsets:
        _refuse_duplicates(data, subset)
    if not any(subset.utterances for subset in subsets):
        raise LayoutError(f"{data}: the {bench} layout is there but names no utterance")
    given = {name: value for name, value in overrides.items() if value is not None}
    if "prompt" in given:  # the flag's prompt, not each line's own
        for subset in subsets:
            subset.utterances = [replace(u, prompt=None) for u in subset.utterances]
    subsets = [
        replace(subset, defaults=replace(subset.defaults, **given))
        for subset in subsets
    ]
    for subset in subsets:
        rules = subset.defaults
        if (
            rules.protocol == "qwen2-audio"
            and rules.metric == "wer"
            and not rules.language
        ):
            raise LayoutError(
                f"{data}: {subset.name}: the qwen2-audio protocol's normaliser follows the language, "
                f"and none is known for it: pass --language (en, zh, yue, fr, ...)"
            )
    return subsets
