"""SRT and WebVTT subtitles from SRWT's timed words (shared by infer.py --srt/--vtt and the web demo)."""

import os
from collections import defaultdict
from pathlib import Path

from ..text.tasks import Word


def subtitle_paths(audio_paths: list[str], folder: str, suffix: str) -> list[Path]:
    """Where each file's subtitles go: next to its audio, or in `folder`. Files of one name from different folders
    are told apart by their paths below the folder they share (x/a.wav, y/a.wav -> x_a.srt, y_a.srt), files of one
    stem in one folder by their full names (a.flac, a.ogg -> a.flac.srt, a.ogg.srt): never written over each
    other."""
    paths = [
        Path(folder or Path(audio).parent) / (Path(audio).stem + suffix)
        for audio in audio_paths
    ]
    sharing = defaultdict(list)  # subtitle path -> the audio files that would write it
    for path, audio in zip(paths, audio_paths):
        sharing[path].append(os.path.abspath(audio))
    renamed = []
    for path, audio in zip(paths, audio_paths):
        group = sorted(set(sharing[path]))
        if len(group) > 1:
            below = [
                Path(os.path.relpath(other, os.path.commonpath(group)))
                for other in group
            ]
            stems = ["_".join(b.with_suffix(suffix).parts) for b in below]
            mine = group.index(os.path.abspath(audio))
            name = (
                stems[mine]
                if stems.count(stems[mine]) == 1
                else "_".join(below[mine].parts) + suffix
            )
            path = path.with_name(name)
        renamed.append(path)
    return renamed


def cues(
    words: list[Word], max_chars: int = 42, max_gap: float = 1.0
) -> list[tuple[float, float, str]]:
    """(start, end, text) of consecutive timed words: a new cue after `max_chars` or a pause over `max_gap` s
    (subtitle cues, and the server's verbose_json segments)."""
    groups, cue = [], []
    for word in (w for w in words if w.start is not None or w.end is not None):
        last_end = cue[-1].end if cue else None
        if cue and (
            len(" ".join(w.text for w in cue + [word])) > max_chars
            or (None not in (last_end, word.start) and word.start - last_end > max_gap)
        ):
            groups.append(cue)
            cue = []
        cue.append(word)
    groups += [cue] if cue else []
    return [
        (
            next(t for w in cue for t in (w.start, w.end) if t is not None),
            next(t for w in reversed(cue) for t in (w.end, w.start) if t is not None),
            " ".join(w.text for w in cue),
        )
        for cue in groups
    ]


def subtitles(
    words: list[Word], vtt: bool, max_chars: int = 42, max_gap: float = 1.0
) -> str:
    """SRT or WebVTT cues of consecutive timed words: a new cue after `max_chars` or a pause over `max_gap` s."""

    def clock(seconds: float) -> str:
        millis = round(seconds * 1000)
        return (
            f"{millis // 3600000:02d}:{millis // 60000 % 60:02d}:{millis // 1000 % 60:02d}"
            f"{'.' if vtt else ','}{millis % 1000:03d}"
        )

    blocks = ["WEBVTT"] if vtt else []
    for number, (start, end, text) in enumerate(cues(words, max_chars, max_gap), 1):
        cue_text = f"{clock(start)} --> {clock(end)}\n{text}"
        blocks.append(cue_text if vtt else f"{number}\n{cue_text}")
    return "\n\n".join(blocks) + "\n"
