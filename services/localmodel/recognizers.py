"""A pool of recogniser processes with per-utterance affinity, so utterances are decoded while they are spoken.

pocketsphinx holds the GIL while it decodes, so recognition runs in worker processes (``spawn``), one
:class:`~services.localmodel.asr.Recognizer` each. An utterance stream (:meth:`RecognizerPool.stream`) is
bound to one worker for its lifetime: the session feeds it audio as the caller speaks and the worker decodes
as it goes (:class:`~services.localmodel.asr.UtteranceStream`), so at speech_stopped only the last chunk and
the final search remain. Whole-utterance requests (:meth:`RecognizerPool.recognize`: manual commits, warm-up,
fallback) go to the least-loaded worker too.

The event loop never blocks on a pipe: each worker has a sender thread (draining an unbounded queue into its
pipe) and a reader thread (results back to the loop with ``call_soon_threadsafe``). A worker that dies fails
its pending requests with :class:`RecognizerError` and is replaced on next use.

Messages to a worker: ``("start", id, spec)``, ``("feed", id, pcm bytes)``, ``("finish", id)``, ``("cancel",
id)``, ``("recognize", id, spec, pcm bytes)``, ``("exit",)``. Replies: ``(id, Transcript | None, error | None)``
for finish and recognize.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import multiprocessing
import queue
import threading
from multiprocessing.connection import Connection
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from services.localmodel.asr import Recognizer, Transcript, UtteranceStream
from services.localmodel.grammar import LanguageModelSpec

__all__ = ["RecognizerError", "RecognizerPool", "Utterance"]

log = logging.getLogger(__name__)

_EXIT: Final = ("exit",)


class RecognizerError(RuntimeError):
    """A recognition request failed (the worker raised, or died)."""


def _worker_main(conn: Connection) -> None:
    """A worker process: serve requests from ``conn`` until ``exit`` or EOF (runs in the child)."""
    recognizer = Recognizer()
    streams: dict[int, UtteranceStream] = {}
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        kind = message[0]
        if kind == "exit":
            return
        request_id = message[1]
        try:
            if kind == "start":
                streams[request_id] = recognizer.start_stream(message[2])
            elif kind == "feed":
                stream = streams.get(request_id)
                if stream is not None:
                    stream.feed(np.frombuffer(message[2], dtype="<i2"))
            elif kind == "cancel":
                stream = streams.pop(request_id, None)
                if stream is not None:
                    stream.cancel()
            elif kind == "finish":
                stream = streams.pop(request_id, None)
                if stream is None:
                    conn.send((request_id, None, "unknown utterance"))
                else:
                    conn.send((request_id, stream.finish(), None))
            elif kind == "recognize":
                conn.send((request_id, recognizer.recognize(message[2], np.frombuffer(message[3], dtype="<i2")),
                           None))
        except Exception as exc:  # reported to the caller; the worker keeps serving
            streams.pop(request_id, None)
            if kind in ("finish", "recognize"):
                with contextlib.suppress(Exception):
                    conn.send((request_id, None, f"{type(exc).__name__}: {exc}"))


class _Worker:
    """The parent's side of one worker process."""

    def __init__(self, index: int, loop: asyncio.AbstractEventLoop, context: Any) -> None:
        self.index = index
        self.loop = loop
        parent, child = multiprocessing.Pipe(duplex=True)
        self.conn = parent
        self.process = context.Process(target=_worker_main, args=(child,), daemon=True,
                                       name=f"localmodel-asr-{index}")
        self.process.start()
        child.close()
        self.outbox: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self.pending: dict[int, asyncio.Future[Transcript]] = {}
        self.load = 0
        """Open streams plus whole-utterance requests in flight (for least-loaded placement)."""
        self.alive = True
        threading.Thread(target=self._send_loop, name=f"asr-send-{index}", daemon=True).start()
        threading.Thread(target=self._recv_loop, name=f"asr-recv-{index}", daemon=True).start()

    def send(self, message: tuple[Any, ...]) -> None:
        self.outbox.put(message)

    def _send_loop(self) -> None:
        while True:
            message = self.outbox.get()
            try:
                self.conn.send(message)
            except (OSError, ValueError, BrokenPipeError):
                return
            if message == _EXIT:
                return

    def _recv_loop(self) -> None:
        while True:
            try:
                request_id, transcript, error = self.conn.recv()
            except (EOFError, OSError, ValueError):
                with contextlib.suppress(RuntimeError):
                    self.loop.call_soon_threadsafe(self._died)
                return
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
                self.loop.call_soon_threadsafe(self._resolve, request_id, transcript, error)

    def _resolve(self, request_id: int, transcript: Transcript | None, error: str | None) -> None:
        future = self.pending.pop(request_id, None)
        if future is None or future.done():
            return
        if error is not None or transcript is None:
            future.set_exception(RecognizerError(error or "no transcript"))
        else:
            future.set_result(transcript)

    def _died(self) -> None:
        self.alive = False
        for future in self.pending.values():
            if not future.done():
                future.set_exception(RecognizerError(f"recogniser worker {self.index} exited"))
        self.pending.clear()

    def expect(self, request_id: int) -> asyncio.Future[Transcript]:
        future: asyncio.Future[Transcript] = self.loop.create_future()
        if not self.alive:
            future.set_exception(RecognizerError(f"recogniser worker {self.index} exited"))
        else:
            self.pending[request_id] = future
        return future

    def stop(self, timeout: float) -> None:
        self.send(_EXIT)
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(1.0)
        with contextlib.suppress(Exception):
            self.conn.close()


class Utterance:
    """One utterance being recognised on one worker: :meth:`feed` audio, then ``await`` :meth:`finish` (or
    :meth:`cancel`). Every method but :meth:`finish` returns at once."""

    def __init__(self, pool: RecognizerPool, worker: _Worker, request_id: int) -> None:
        self._pool = pool
        self._worker = worker
        self._id = request_id
        self._open = True

    def feed(self, pcm16k: npt.NDArray[np.int16]) -> None:
        """Queue 16 kHz PCM16 for decoding."""
        if self._open and len(pcm16k):
            self._worker.send(("feed", self._id, np.ascontiguousarray(pcm16k, dtype="<i2").tobytes()))

    async def finish(self) -> Transcript:
        """The utterance's transcript.

        Raises:
            RecognizerError: the worker failed or died.
        """
        if not self._open:
            raise RecognizerError("utterance already finished or cancelled")
        self._open = False
        future = self._worker.expect(self._id)
        self._worker.send(("finish", self._id))
        try:
            return await future
        finally:
            self._pool._done(self._worker)

    def cancel(self) -> None:
        """Abandon the utterance (its decoder goes back to the worker's pool)."""
        if self._open:
            self._open = False
            self._worker.send(("cancel", self._id))
            self._pool._done(self._worker)


class RecognizerPool:
    """``workers`` recogniser processes shared by every session of the server."""

    def __init__(self, workers: int) -> None:
        self.size = max(1, workers)
        self._workers: list[_Worker] = []
        self._ids = itertools.count(1)
        self._context = multiprocessing.get_context("spawn")

    def _ensure(self) -> None:
        """Start the workers (first use) and replace any that died."""
        loop = asyncio.get_running_loop()
        if not self._workers:
            self._workers = [_Worker(i, loop, self._context) for i in range(self.size)]
        for i, worker in enumerate(self._workers):
            if not worker.alive:
                log.warning("recogniser worker %d died; starting a new one", worker.index)
                self._workers[i] = _Worker(worker.index, loop, self._context)

    def _pick(self) -> _Worker:
        self._ensure()
        worker = min(self._workers, key=lambda w: w.load)
        worker.load += 1
        return worker

    def _done(self, worker: _Worker) -> None:
        worker.load = max(0, worker.load - 1)

    def stream(self, spec: LanguageModelSpec) -> Utterance:
        """Start an utterance on the least-loaded worker (call from the event loop)."""
        worker = self._pick()
        request_id = next(self._ids)
        worker.send(("start", request_id, spec))
        return Utterance(self, worker, request_id)

    async def recognize(self, spec: LanguageModelSpec, pcm16k: npt.NDArray[np.int16]) -> Transcript:
        """Recognise a whole utterance on the least-loaded worker.

        Raises:
            RecognizerError: the worker failed or died.
        """
        worker = self._pick()
        request_id = next(self._ids)
        future = worker.expect(request_id)
        worker.send(("recognize", request_id, spec, np.ascontiguousarray(pcm16k, dtype="<i2").tobytes()))
        try:
            return await future
        finally:
            self._done(worker)

    async def warm(self, spec: LanguageModelSpec) -> None:
        """Build the recogniser (acoustic model, ``spec``'s LM and grammar, CMN prior) in every worker."""
        silence = np.zeros(3200, dtype=np.int16)
        self._ensure()
        futures = []
        for worker in self._workers:
            for _ in range(2):
                request_id = next(self._ids)
                futures.append(worker.expect(request_id))
                worker.send(("recognize", request_id, spec, silence.tobytes()))
        await asyncio.gather(*futures)

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop every worker (``exit``, then kill after ``timeout`` s)."""
        workers, self._workers = self._workers, []
        for worker in workers:
            worker.stop(timeout)
