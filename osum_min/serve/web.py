"""A web page in front of the inference pipeline (`python infer.py --web`): every task of `tasks.py` in the browser.

The page does what `infer.py` does for one file, through the same request path (pipeline.py): audio (upload or
microphone) cut into <= 30 s windows, the windows decoded as a batch, each window's text parsed for the task and the
windows joined. The model is loaded
once; gradio's queue runs one request at a time, because one model must not decode two batches at once. Every
problem (unreadable upload, bad prompt ids, missing weights) comes back as one line on the page and the server
keeps serving. gradio is an optional extra (`pip install .[demo]`), imported only here and only when called.
"""

import shutil
import sys
import tempfile
import traceback
import weakref
from dataclasses import replace
from pathlib import Path


from ..model.generate import DEFAULT_DECODING, GenerationConfig
from ..model.osum import OSUM, load_for_inference
from ..inference.pipeline import Pipeline, Request
from ..inference.subtitles import subtitles
from ..text.tasks import TASKS, free_prompt_task, parse_prompt_ids
from ..text.tokenizer import Tokenizer, tokenizer_or_none

FREE_PROMPT = "prompt"
CACHE_SECONDS = 3600


class DemoUnavailable(ValueError):
    """The web demo cannot start (its optional extra is missing)."""


def import_gradio():
    try:
        import gradio
    except ImportError:
        raise DemoUnavailable(
            "the web demo needs gradio: pip install .[demo]"
        ) from None
    return gradio


def decoding(
    eos_id: int,
    beams: int,
    sample: bool,
    temperature: float,
    top_k: int,
    top_p: float,
    repetition_penalty: float,
    max_new_tokens: int,
    seed: int | None,
) -> GenerationConfig:
    """The page's decoding settings; defaults are infer.py's (beam 4, penalty 1.05).
    GenerationConfig checks them (a ValueError the page shows in one line)."""
    return replace(
        DEFAULT_DECODING,
        eos_token_id=eos_id,
        num_beams=whole(beams),
        do_sample=bool(sample),
        temperature=temperature,
        top_k=whole(top_k),
        top_p=top_p,
        repetition_penalty=repetition_penalty,
        max_new_tokens=whole(max_new_tokens),
        seed=None if seed in (None, "") else whole(seed),
    )


def whole(value):
    """A widget's whole number (gradio sends 4.0 for 4); any other value as it is, for
    GenerationConfig to refuse."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def srt_file(words, audio_path: str, folder: Path) -> str | None:
    """The timed words as an SRT file for download, in the server's temporary folder (None without times)."""

    if not any(w.start is not None or w.end is not None for w in words):
        return None
    path = folder / f"{Path(audio_path).stem}.srt"
    path.write_text(subtitles(words, vtt=False), encoding="utf-8")
    return str(path)


def build_demo(
    model: OSUM | None,
    tokenizer: Tokenizer | None,
    examples=(),
    batch_size: int = 8,
    unavailable: str | None = None,
):
    """The page as gradio Blocks. model None: every request answers `unavailable` (e.g. why weights are missing).
    examples: (audio path, task name) pairs offered under the page, those that exist (infer.py gives the repository's).
    Without a tokenizer the page runs in debugging mode: prompt ids in, token ids out."""
    gr = import_gradio()
    subtitle_folder = Path(tempfile.mkdtemp(prefix="osum_web_"))
    task_choices = [(f"{task.name}  {task.tag}", task.name) for task in TASKS.values()]
    task_choices.append(("free prompt", FREE_PROMPT))

    def run(
        audio_path,
        task_name,
        prompt_text,
        prompt_ids_text,
        beams,
        sample,
        temperature,
        top_k,
        top_p,
        repetition_penalty,
        max_new_tokens,
        seed,
        progress=gr.Progress(),
    ):
        """-> status, text, parsed (highlighted), words table, SRT file, ids, JSON record."""
        try:
            if model is None:
                raise ValueError(unavailable or "no model loaded")
            if not audio_path:
                raise ValueError(
                    "no audio: upload a file or record from the microphone"
                )
            task = TASKS.get(task_name) or free_prompt_task(prompt_text or "")
            if prompt_text and prompt_text.strip() and task_name != FREE_PROMPT:
                task = replace(task, prompt=prompt_text.strip())
            given_ids = bool(prompt_ids_text and prompt_ids_text.strip())
            if not given_ids and tokenizer is None:
                raise ValueError(
                    "this model has no tokenizer: give the prompt as token ids (Debugging)"
                )
            if not given_ids and not task.prompt.strip():
                raise ValueError("free prompt: type the prompt text")
            config = decoding(
                model.config.eod_id,
                beams,
                sample,
                temperature,
                top_k,
                top_p,
                repetition_penalty,
                max_new_tokens,
                seed,
            )
            ids = parse_prompt_ids(prompt_ids_text) if given_ids else None
            # name the upload, not gradio's cache folder
            request = Request(
                audio_path,
                task=task,
                prompt_ids=ids,
                config=config,
                name=Path(audio_path).name,
            )
            [(_, answer)] = Pipeline(model, tokenizer, batch_size).run(
                [request],
                on_batch=lambda done, total: progress((done, total), desc="windows"),
            )
            if answer.error:
                raise ValueError(
                    answer.error.problem
                    if answer.error.kind == "prompt"
                    else str(answer.error)
                )
            out, result = answer.decoded, answer.result
        except ValueError as err:
            return page(f"**Error:** {err}")
        except Exception as err:  # noqa: BLE001  the page shows one line; the server log keeps the traceback
            traceback.print_exc()
            return page(
                f"**Error:** {type(err).__name__}: {' '.join(str(err).split())}"
            )

        ids_text = " | ".join(" ".join(map(str, window)) for window in out.ids)
        record = {
            **answer.to_json(with_ids=True),
            **({"prompt_ids": answer.prompt_ids} if given_ids else {}),
        }
        status = (
            f"{out.audio_seconds:.2f} s of audio in {len(out.windows)} window{'s' * (len(out.windows) > 1)}, "
            f"decoded in {out.decode_seconds:.2f} s (real-time factor "
            f"{out.decode_seconds / out.audio_seconds:.3f})"
        )
        if result is None:
            return page(
                status + " · no tokenizer: token ids only",
                ids_text,
                ids=ids_text,
                record=record,
            )
        if result.issues:
            status += "  \n**Parser notes:** " + "; ".join(result.issues)
        parsed = [(result.transcript or "", None)] if result.transcript else []
        parsed += [
            (label, kind + " (unknown)" if kind in result.unknown_labels else kind)
            for kind, label in result.labels.items()
        ]
        parsed += [(result.reply, "reply")] if result.reply is not None else []
        words = (
            [[w.text, w.start, w.end] for w in result.words]
            if result.words is not None
            else None
        )
        srt = (
            srt_file(result.words, audio_path, subtitle_folder)
            if result.words
            else None
        )
        return page(status, result.raw, parsed, words, srt, ids_text, record)

    def page(status, text="", parsed=(), words=None, srt=None, ids="", record=None):
        """Every output of a request; the words table and the SRT file show only when there are timed words."""
        return (
            status,
            text,
            list(parsed),
            gr.Dataframe(words, visible=words is not None),
            gr.File(srt, visible=srt is not None),
            ids,
            record,
        )

    # uploads and result files: those older than an hour are deleted every hour, all of them when the server closes
    named = model is not None and model.config.name != "osum"
    title = model.config.name if named else "OSUM"  # osum-mini is named as itself
    with gr.Blocks(
        title=title,
        analytics_enabled=False,
        delete_cache=(CACHE_SECONDS, CACHE_SECONDS),
    ) as demo:
        gr.Markdown(
            f"# {title}\nSpeech understanding: transcripts, timed words, emotion, style, gender, age, events "
            "and spoken chat. Audio over 30 s is cut into windows at quiet points."
        )
        if unavailable:
            gr.Markdown(f"**The model is not available:** {unavailable}")
        with gr.Row():
            with gr.Column():
                audio = gr.Audio(
                    sources=["upload", "microphone"],
                    type="filepath",
                    label="Audio",
                    elem_id="audio",
                )
                task = gr.Dropdown(
                    task_choices, value="asr", label="Task", elem_id="task"
                )
                prompt = gr.Textbox(
                    TASKS["asr"].prompt,
                    label="Prompt (the task's; edit it, or choose free prompt)",
                    lines=2,
                    elem_id="prompt",
                )
                with gr.Accordion("Decoding settings", open=False):
                    beams = gr.Slider(
                        1, 8, value=DEFAULT_DECODING.num_beams, step=1, label="Beams"
                    )
                    sample = gr.Checkbox(DEFAULT_DECODING.do_sample, label="Sampling")
                    temperature = gr.Slider(
                        0.05,
                        2.0,
                        value=DEFAULT_DECODING.temperature,
                        label="Temperature",
                    )
                    top_k = gr.Slider(
                        0,
                        100,
                        value=DEFAULT_DECODING.top_k,
                        step=1,
                        label="Top-k (0 = off)",
                    )
                    top_p = gr.Slider(
                        0.05, 1.0, value=DEFAULT_DECODING.top_p, label="Top-p"
                    )
                    penalty = gr.Slider(
                        1.0,
                        2.0,
                        value=DEFAULT_DECODING.repetition_penalty,
                        label="Repetition penalty",
                    )
                    max_new = gr.Slider(
                        1,
                        1000,
                        value=DEFAULT_DECODING.max_new_tokens,
                        step=1,
                        label="Max new tokens",
                    )
                    seed = gr.Number(
                        None, precision=0, label="Seed (sampling; empty = random)"
                    )
                with gr.Accordion("Debugging", open=tokenizer is None):
                    prompt_ids = gr.Textbox(
                        label="Prompt token ids (comma-separated; replace the prompt text)",
                        placeholder="17,230,511,42,901,7,333",
                        elem_id="prompt_ids",
                    )
                run_button = gr.Button("Run", variant="primary", elem_id="run")
            with gr.Column():
                status = gr.Markdown(elem_id="status")
                text = gr.Textbox(label="Model output", lines=3, elem_id="text")
                parsed = gr.HighlightedText(
                    label="Parsed: transcript and labels", elem_id="parsed"
                )
                words = gr.Dataframe(
                    headers=["word", "start (s)", "end (s)"],
                    label="Timed words",
                    elem_id="words",
                    visible=False,
                )
                srt = gr.File(label="Subtitles (SRT)", elem_id="srt", visible=False)
                with gr.Accordion("Token ids and JSON", open=tokenizer is None):
                    ids = gr.Textbox(label="Generated token ids", elem_id="ids")
                    json_record = gr.JSON(label="JSON (as infer.py --json)")
        clips = [[str(path), name] for path, name in examples if Path(path).is_file()]
        if clips:
            gr.Examples(clips, inputs=[audio, task], label="Examples")
        task.change(
            lambda name: "" if name == FREE_PROMPT else TASKS[name].prompt,
            task,
            prompt,
            api_visibility="private",
        )
        run_button.click(
            run,
            [
                audio,
                task,
                prompt,
                prompt_ids,
                beams,
                sample,
                temperature,
                top_k,
                top_p,
                penalty,
                max_new,
                seed,
            ],
            [status, text, parsed, words, srt, ids, json_record],
            api_name="transcribe",
        )
    # with the page, or at exit
    weakref.finalize(demo, shutil.rmtree, subtitle_folder, ignore_errors=True)
    return demo


def launch(
    demo, host: str = "127.0.0.1", port: int = 7860, examples=(), block: bool = True
):
    """Queue requests one at a time (one model) and serve; system fonts only, so the page needs no network.
    Only the example clips themselves are served from disk, not the folders they are in."""
    gr = import_gradio()
    theme = gr.themes.Default(
        font=["ui-sans-serif", "system-ui", "sans-serif"],
        font_mono=["ui-monospace", "monospace"],
    )
    demo.queue(default_concurrency_limit=1)
    return demo.launch(
        server_name=host,
        server_port=port,
        theme=theme,
        prevent_thread_lock=not block,
        allowed_paths=sorted(str(path) for path, _ in examples if Path(path).is_file()),
        footer_links=["api"],
    )


def serve(
    weights_dir,
    host: str = "127.0.0.1",
    port: int = 7860,
    device=None,
    dtype=None,
    quantize=None,
    examples=(),
    batch_size: int = 8,
) -> int:
    """Load once and serve until interrupted. Weights that cannot be loaded still give a page, which says why."""
    import_gradio()
    model, tokenizer, problem = None, None, None
    try:
        found = tokenizer_or_none(weights_dir)  # None: the page runs on token ids
        # both, or neither
        model, tokenizer = (
            load_for_inference(weights_dir, found, device, dtype, quantize=quantize),
            found,
        )
    except (OSError, ValueError, RuntimeError) as err:
        problem = f"cannot load {weights_dir}: {' '.join(str(err).split())}"
        print(f"osum web: {problem}", file=sys.stderr)
    launch(
        build_demo(model, tokenizer, examples, batch_size, problem),
        host,
        port,
        examples,
    )
    return 0
