"""How hard a corpus is to hear: Whisper base itself, with its own decoder, on a list's clips.

osum-mini's adaptor learns from the Whisper base encoder's outputs; Whisper base's own decoder, trained
on 680,000 hours, is what those outputs can give at best. Where it hears a synthetic corpus far worse
than real speech (run 6: 68 % WER against 10 %, docs/mini.md), the corpus, not the adaptor, is what
to change. Greedy, English, no timestamps, the mel padded to 30 s as Whisper was trained (unpadded, it
loops), both read from the [mini] packages' model.bin (its decoder too) by openai-whisper.

    python examples/mini/hearing.py DATA/dev.jsonl [--limit 200]

Prints WER overall and, where make_corpus.py's `wav/KEY.json` gives each clip's style, by voice,
noise, telephone band and reverberation; then one JSON line of the figures.
"""

import argparse
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from osum_min.audio import AudioError, load_audio  # noqa: E402
from osum_min.convert import ct2, mini  # noqa: E402
from osum_min.data.formats import DataError, read_data_list  # noqa: E402
from osum_min.eval.scoring import edit_distance  # noqa: E402
from osum_min.progress import Progress, status  # noqa: E402
from osum_min.weights import WeightsError  # noqa: E402

WHISPER = "openai-whisper is not installed: pip install '.[eval]'"
TOKENS_PER_SECOND = 4.5  # a cap on the answer: fast speech is 3-4 tokens a second


def whisper_base():
    """Whisper base as an openai-whisper model (float32), from osum-mini's encoder part."""
    import whisper

    part = mini.PARTS["encoder"]
    files = mini.part_files(part)
    model_bin = mini.Bytes()
    size = sum(path.stat().st_size for path in files)
    with Progress(size, "reading Whisper base", unit="B") as bar:
        mini.join(part, files, model_bin, bar)
    variables = ct2.parse_ctranslate2(model_bin.value(), files[0])
    dims = ct2.encoder_dims(variables) | ct2.decoder_dims(variables)
    model = whisper.model.Whisper(whisper.model.ModelDimensions(**dims))
    encoder = ct2.ct2_encoder_state(variables, dims["n_audio_layer"])
    decoder = ct2.ct2_decoder_state(variables, dims["n_text_layer"])
    state = {f"encoder.{name}": tensor for name, tensor in encoder.items()}
    state |= {f"decoder.{name}": tensor for name, tensor in decoder.items()}
    model.load_state_dict(state, strict=True)  # every weight, nothing left over
    return model.eval()


def words(text: str) -> list[str]:
    """Lowercased words of letters and apostrophes; SRWT's `<0.3,0.7>` times dropped."""
    text = re.sub(r"<[^>]*>", " ", text).lower()
    return re.sub(r"[^a-z' ]", " ", text).split()


@torch.no_grad()
def transcribe(model, path: str) -> str:
    import whisper

    audio = load_audio(path)  # (samples,) at 16 kHz
    seconds = len(audio) / 16000
    mel = whisper.log_mel_spectrogram(whisper.pad_or_trim(audio), model.dims.n_mels)
    options = whisper.DecodingOptions(
        language="en",
        without_timestamps=True,
        fp16=False,
        sample_len=int(TOKENS_PER_SECOND * min(seconds, 30.0)) + 10,
    )
    return whisper.decode(model, mel, options).text


def style_groups(path: str) -> list[str]:
    """The groups a clip counts in, from make_corpus.py's record beside it (none: "all" only)."""
    record = Path(path).with_suffix(".json")
    if not record.exists():
        return ["all"]
    style = json.loads(record.read_text())["style"]
    clean = not style["telephone"] and style["snr_db"] >= 30 and not style["reverb"]
    return [
        "all",
        f"voice {style['voice']}",
        f"noise {style['snr_db']} dB SNR",
        f"telephone {style['telephone']}",
        f"reverb {style['reverb']}",
        f"clean {clean}",
    ]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data", type=Path, help="a wenet raw list (make_corpus.py's)")
    parser.add_argument("--limit", type=int, help="its first N plain-transcript clips")
    args = parser.parse_args(argv)
    try:
        import whisper  # noqa: F401
    except ImportError:
        sys.exit(f"hearing.py: error: {WHISPER}")
    try:
        items = read_data_list(args.data)
    except DataError as err:
        sys.exit(f"hearing.py: error: {err}")
    # one line per clip: its plain transcript (gender and SRWT lines repeat clips)
    items = [item for item in items if item.get("task") == "<TRANSCRIBE>"]
    items = items[: args.limit]
    if not items:
        sys.exit(f"hearing.py: error: {args.data}: no <TRANSCRIBE> lines")
    status("loading Whisper base")
    try:
        model = whisper_base()
    except WeightsError as err:  # a part missing or not the pinned one
        sys.exit(f"hearing.py: error: {err}")
    errors, counted = defaultdict(int), defaultdict(int)
    with Progress(len(items), "hearing", unit="clip") as bar:
        for item in items:
            try:
                hyp = words(transcribe(model, item["wav"]))
            except AudioError as err:  # reported; the other clips are heard
                print(f"hearing.py: skipped: {err}", file=sys.stderr)
            else:
                ref = words(item["txt"])
                for group in style_groups(item["wav"]):
                    errors[group] += edit_distance(ref, hyp).errors
                    counted[group] += len(ref)
            bar.update()
    if not counted["all"]:
        sys.exit(f"hearing.py: error: {args.data}: no clip could be heard")
    wer = {g: round(100.0 * errors[g] / counted[g], 1) for g in sorted(counted)}
    for group in wer:
        print(f"{group:40s} {counted[group]:6d} words  WER {wer[group]:5.1f} %")
    figures = {"clips": len(items), "words": counted["all"], "whisper_base_wer": wer}
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
