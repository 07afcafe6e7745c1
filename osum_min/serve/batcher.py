"""Batching across HTTP requests: one worker thread owns the model and decodes what arrives together as one batch.

Handlers put Jobs (a checked pipeline Request) on a bounded queue. The worker takes the first job and waits for
company up to `batch_size` jobs: while each comes within `wait_s` of the last, or the server is still reading
requests that have arrived, for `max_wait_s` at most. It drops those whose client has gone and runs the rest through
`Pipeline.run` as one list, which batches those that decode alike and never batches sampling requests, so every
answer equals the one its request gets alone. Once every client still waiting on a batch has gone (disconnected or
timed out), the batch stops before its next token. Answers and streamed tokens go back to each handler's event loop.
"""

import asyncio
import queue
import threading
import time
from collections import Counter
from dataclasses import dataclass

from ..model.generate import DecodingStopped
from ..inference.pipeline import Answer, Pipeline, Request, RequestError


class QueueFull(RuntimeError):
    """More requests are waiting than the server takes (503)."""


@dataclass
class Job:
    """One request on its way through the worker. `tokens`, when streaming, receives each token id and then the
    Answer; `answer` resolves with the Answer (with its `.error` when the request failed)."""

    request: Request
    loop: asyncio.AbstractEventLoop
    answer: asyncio.Future
    tokens: asyncio.Queue | None = None
    cancelled: bool = False  # the client went away or timed out: dropped, or its batch stopped when all are

    def token(self, token_id: int):
        if self.tokens is not None and not self.cancelled:
            self.loop.call_soon_threadsafe(self.tokens.put_nowait, token_id)

    def resolve(self, answer: Answer):
        def settle():
            if not self.answer.done():
                self.answer.set_result(answer)
            if self.tokens is not None:
                self.tokens.put_nowait(answer)

        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(settle)


class Batcher:
    def __init__(
        self,
        pipeline: Pipeline,
        batch_size: int = 8,
        max_queue: int = 64,
        wait_s: float = 0.005,
        max_wait_s: float = 0.2,
    ):
        self.pipeline, self.batch_size, self.wait_s, self.max_wait_s = (
            pipeline,
            batch_size,
            wait_s,
            max_wait_s,
        )
        self.arriving = 0  # requests the server is reading and checking (changed on its event loop only)
        self.queue = queue.Queue(max_queue)
        # batch size -> batches of it run (bounded: a server runs for weeks)
        self.batch_sizes = Counter()
        self.worker = threading.Thread(
            target=self._work, name="osum-batcher", daemon=True
        )
        self.worker.start()

    def submit(self, request: Request, stream: bool = False) -> Job:
        """Queue a request from the event loop; QueueFull when the queue is full."""
        loop = asyncio.get_running_loop()
        job = Job(
            request, loop, loop.create_future(), asyncio.Queue() if stream else None
        )
        try:
            self.queue.put_nowait(job)
        except queue.Full:
            raise QueueFull(
                f"the server is busy: {self.queue.maxsize} requests are already waiting"
            ) from None
        return job

    def _gather(self) -> list[Job]:
        """The next job and those that follow it each within `wait_s` of the last, or while the server is still
        reading requests (a burst of clients reaches the queue some milliseconds apart), for at most `max_wait_s`
        and up to `batch_size` jobs, without cancelled ones."""
        jobs = [self.queue.get()]
        first = last = time.perf_counter()
        while len(jobs) < self.batch_size:
            now = time.perf_counter()
            if now - first >= self.max_wait_s or (
                now - last >= self.wait_s and not self.arriving
            ):
                break
            try:
                jobs.append(self.queue.get(timeout=min(0.001, self.wait_s)))
                last = time.perf_counter()
            except queue.Empty:
                pass
        return [job for job in jobs if not job.cancelled]

    def _work(self):
        while True:
            jobs = self._gather()
            if not jobs:
                continue
            self.batch_sizes[len(jobs)] += 1
            pending = set(range(len(jobs)))
            try:
                for index, answer in self.pipeline.run(
                    [job.request for job in jobs],
                    on_token=lambda index, token: jobs[index].token(token),
                    keep_going=lambda: (
                        not all(jobs[index].cancelled for index in pending)
                    ),
                ):
                    pending.discard(index)
                    jobs[index].resolve(answer)
            # every client still waiting on this batch went away or timed out
            except DecodingStopped as err:
                self._fail(jobs, pending, str(err))
            except Exception as err:  # noqa: BLE001  one bad batch fails its requests, never the worker
                self._fail(
                    jobs,
                    pending,
                    f"internal error while decoding: {type(err).__name__}: "
                    f"{' '.join(str(err).split())[:200]}",
                )

    @staticmethod
    def _fail(jobs: list[Job], pending: set[int], problem: str):
        for index in pending:
            request = jobs[index].request
            jobs[index].resolve(
                Answer(
                    request.label,
                    request.task,
                    error=RequestError(request.label, problem, "decoding"),
                )
            )
