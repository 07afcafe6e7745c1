"""The server's batching across requests: concurrent clients against the same requests sent one at a time.

A random-weight OSUM (Whisper-tiny-sized encoder and adaptor, Qwen2-0.5B-sized LLM: 24 layers, hidden 896,
vocabulary 151936, as bench/infer.py) is served on 127.0.0.1 by osum_min/serve/server.py in this process (uvicorn in a
thread; the clients are httpx threads). `--requests` transcription requests of 5-15 s clips (infer.py's default
decoding, beam 4, penalty 1.05, `--new-tokens` tokens: a random model never writes its eos) are sent one at a time,
then by 8 and by 16 concurrent clients; the figures are throughput (requests/s) against one at a time, p50/p95
latency, whether every answer equals its one-at-a-time answer, and the time to the first streamed token (greedy chat
streams, alone and 8 at once). A byte-level stand-in tokenizer spells the random ids (most as <|id:N|>).

    python bench/serve.py                    # CPU, a few minutes on 2 cores
    python bench/serve.py --device cuda
    python bench/serve.py --smoke            # tiny model and sizes, seconds (tests/test_bench.py)
"""

import argparse
import base64
import io
import json
import socket
import statistics
import sys
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import soundfile
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from osum_min.model.adaptor import AdaptorConfig  # noqa: E402
from osum_min.audio import SAMPLE_RATE  # noqa: E402
from osum_min.model.encoder import ENCODER_PRESETS  # noqa: E402
from osum_min.model.osum import OSUM, OSUM_PRESETS, OSUMConfig  # noqa: E402
from osum_min.inference.pipeline import Pipeline  # noqa: E402
from osum_min.model.qwen2 import LLM_PRESETS  # noqa: E402
from osum_min.serve.server import ServerConfig, create_app  # noqa: E402
from osum_min.text.tokenizer import AddedToken, Tokenizer  # noqa: E402


def clip(seconds: float, rng) -> bytes:
    """A noisy harmonic tone with pauses, as 16 kHz WAV bytes."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    voiced = np.sin(2 * np.pi * 0.7 * t + rng.random() * 6) > -0.3
    wav = (
        0.2
        * voiced
        * sum(
            np.sin(2 * np.pi * (120 + 80 * rng.random()) * k * t) / k
            for k in range(1, 5)
        )
    )
    buffer = io.BytesIO()
    soundfile.write(
        buffer,
        (wav + 0.01 * rng.standard_normal(len(t))).astype(np.float32),
        SAMPLE_RATE,
        format="WAV",
    )
    return buffer.getvalue()


def build_model(smoke: bool, device: str) -> tuple[OSUM, Tokenizer]:
    torch.manual_seed(0)
    if smoke:
        config = OSUM_PRESETS["tiny"]
    else:
        encoder = ENCODER_PRESETS["whisper-tiny"]
        config = OSUMConfig(
            encoder=encoder,
            adaptor=AdaptorConfig(dim=encoder.dim, llm_dim=896),
            llm=LLM_PRESETS["qwen2-0.5b"],
        )
    model = OSUM(config)
    torch.nn.init.normal_(model.speech_bos_eos, std=0.02)
    # as OSUM.from_pretrained does
    model = model.to(device).eval().prepare_for_inference(device)
    tokenizer = Tokenizer(
        {bytes([b]): b for b in range(256)},
        [AddedToken("<|endoftext|>", config.eod_id, True)],
    )
    return model, tokenizer


def start_server(app) -> tuple[str, object]:
    import uvicorn

    from osum_min.serve.server import uvicorn_config

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # as infer.py --serve runs it (its timeouts and connection bound)
    server = uvicorn.Server(uvicorn_config(app, "127.0.0.1", port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("the server did not start within 60 s")
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}", server


def transcribe(url: str, audio: bytes) -> tuple[float, str]:
    import httpx

    started = time.perf_counter()
    reply = httpx.post(
        url + "/v1/audio/transcriptions",
        files={"file": ("clip.wav", audio)},
        data={"model": "osum"},
        timeout=3600,
    )
    reply.raise_for_status()
    return time.perf_counter() - started, reply.json()["text"]


def first_token_seconds(url: str, audio: bytes, tokens: int) -> float:
    """Seconds from sending a streamed greedy chat request to its first content."""
    import httpx

    body = {
        "model": "osum",
        "stream": True,
        "max_tokens": tokens,
        "messages": [
            {
                "role": "user",
                "content": [
                    {
                        "type": "input_audio",
                        "input_audio": {
                            "data": base64.b64encode(audio).decode(),
                            "format": "wav",
                        },
                    },
                    {"type": "text", "text": "describe"},
                ],
            }
        ],
    }
    started, first = time.perf_counter(), None
    with httpx.stream(
        "POST", url + "/v1/chat/completions", json=body, timeout=3600
    ) as reply:
        for line in reply.iter_lines():
            if (
                first is None
                and line.startswith("data: {")
                and json.loads(line[6:])["choices"]
                and json.loads(line[6:])["choices"][0]["delta"].get("content")
            ):
                first = time.perf_counter() - started
    return first


def percentile(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 3)


def concurrent(
    url: str, clips: list[bytes], clients: int
) -> tuple[float, list[float], list[str]]:
    """Every clip sent by `clients` threads at once: wall seconds, latencies, texts in clip order."""
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda audio: transcribe(url, audio), clips))
    return (
        time.perf_counter() - started,
        [r[0] for r in results],
        [r[1] for r in results],
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--smoke", action="store_true", help="tiny model, 4 short requests, 4 tokens"
    )
    args = parser.parse_args()
    if args.smoke:
        args.requests, args.new_tokens = 4, 4
    # a random model's ids beyond the stand-in tokenizer
    warnings.filterwarnings("ignore", message="token id")
    rng = np.random.default_rng(0)
    lengths = (
        np.linspace(1, 2, args.requests)
        if args.smoke
        else np.linspace(5, 15, args.requests)
    )
    clips = [clip(seconds, rng) for seconds in rng.permutation(lengths)]
    model, tokenizer = build_model(args.smoke, args.device)
    levels = (2, 4) if args.smoke else (8, 16)
    app = create_app(
        Pipeline(model, tokenizer, batch_size=max(levels)),
        ServerConfig(batch_size=max(levels), max_new_tokens=args.new_tokens),
    )
    url, server = start_server(app)

    transcribe(url, clips[0])  # warm-up: allocator, kernels
    started = time.perf_counter()
    alone = [transcribe(url, audio) for audio in clips]
    alone_seconds = time.perf_counter() - started
    alone_latency = [seconds for seconds, _ in alone]
    figures = {
        "requests": args.requests,
        "audio_seconds": round(float(lengths.sum()), 1),
        "new_tokens": args.new_tokens,
        "beams": 4,
        "device": args.device,
        "threads": torch.get_num_threads(),
        "model": "tiny"
        if args.smoke
        else "random Qwen2-0.5B-sized LLM, Whisper-tiny-sized encoder",
        "alone_requests_per_s": round(args.requests / alone_seconds, 3),
        "alone_latency_p50_s": percentile(alone_latency, 50),
        "alone_latency_p95_s": percentile(alone_latency, 95),
    }
    print(
        f"one at a time: {alone_seconds:.1f} s, {figures['alone_requests_per_s']:.3f} requests/s"
    )
    for clients in levels:
        before = app.state.batcher.batch_sizes.copy()
        seconds, latency, texts = concurrent(url, clips, clients)
        # the sizes of this phase's batches
        batches = list((app.state.batcher.batch_sizes - before).elements())
        figures.update(
            {
                f"c{clients}_requests_per_s": round(args.requests / seconds, 3),
                f"c{clients}_over_alone_throughput": round(alone_seconds / seconds, 2),
                f"c{clients}_latency_p50_s": percentile(latency, 50),
                f"c{clients}_latency_p95_s": percentile(latency, 95),
                f"c{clients}_mean_batch": round(statistics.mean(batches), 2),
                f"c{clients}_identical_to_alone": sum(
                    a[1] == t for a, t in zip(alone, texts)
                ),
            }
        )
        print(
            f"{clients} clients: {seconds:.1f} s, {alone_seconds / seconds:.2f}x one at a time, p50 "
            f"{figures[f'c{clients}_latency_p50_s']} s, p95 {figures[f'c{clients}_latency_p95_s']} s, mean batch "
            f"{figures[f'c{clients}_mean_batch']}, {figures[f'c{clients}_identical_to_alone']}/{args.requests} "
            "identical"
        )
    ttft_alone = [
        first_token_seconds(url, audio, args.new_tokens) for audio in clips[: levels[0]]
    ]
    with ThreadPoolExecutor(levels[0]) as pool:
        ttft_together = list(
            pool.map(
                lambda audio: first_token_seconds(url, audio, args.new_tokens),
                clips[: levels[0]],
            )
        )
    figures.update(
        {
            "stream_first_token_alone_p50_s": percentile(ttft_alone, 50),
            f"stream_first_token_c{levels[0]}_p50_s": percentile(ttft_together, 50),
            f"stream_first_token_c{levels[0]}_p95_s": percentile(ttft_together, 95),
        }
    )
    print(
        f"first streamed token: alone p50 {figures['stream_first_token_alone_p50_s']} s, {levels[0]} at once p50 "
        f"{figures[f'stream_first_token_c{levels[0]}_p50_s']} s"
    )
    server.should_exit = True
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
