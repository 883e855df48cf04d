"""Local parallelism: long-lived worker processes (spawn) that keep the source models loaded.

Why not ``concurrent.futures``: a candidate that hangs or eats all memory must be stopped and
scored as failed while the others go on, and a pool executor can neither kill one task nor
survive a dead worker. Here each worker has its own queue and takes one candidate at a time, so
the driver always knows which candidate a worker holds: on a timeout it terminates that worker,
fails that candidate with the reason and starts a fresh worker; a worker that dies (OOM kill,
segfault) is handled the same way.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hpc_merge.evolve.worker import WorkerSpec, failed

#: Seconds a fresh worker may take to load its models before the pool gives up.
START_TIMEOUT_S = 900


def _worker_main(wid: int, spec: WorkerSpec, inbox: Any, outbox: Any) -> None:
    """Worker process: build the evaluator once, then evaluate jobs until told to stop (None)."""
    try:
        from hpc_merge.evolve.worker import CandidateEvaluator

        evaluator = CandidateEvaluator(spec)
    except BaseException as exc:  # report why, then exit: the driver raises it
        outbox.put(("init_failed", wid, None, f"{type(exc).__name__}: {exc}"))
        return
    outbox.put(("ready", wid, None, None))
    while True:
        item = inbox.get()
        if item is None:
            return
        idx, job = item
        outbox.put(("done", wid, idx, evaluator.safe_evaluate(job)))


@dataclass
class _Worker:
    wid: int
    proc: Any
    inbox: Any
    ready: bool = False
    job: int | None = None  # index of the job it holds
    since: float = 0.0


class LocalPool:
    """``workers`` spawned processes evaluating candidates; ``map`` runs one generation."""

    def __init__(self, spec: WorkerSpec, workers: int = 1, timeout_s: float | None = None):
        self.spec = spec
        self.size = max(1, int(workers))
        self.timeout_s = timeout_s
        self.ctx = mp.get_context("spawn")
        self.outbox = self.ctx.Queue()
        self.workers: dict[int, _Worker] = {}
        self._next_id = 0
        for _ in range(self.size):
            self._start()

    def _start(self) -> None:
        wid, self._next_id = self._next_id, self._next_id + 1
        inbox = self.ctx.Queue()
        proc = self.ctx.Process(target=_worker_main, args=(wid, self.spec, inbox, self.outbox), daemon=True,
                                name=f"hpc-evolve-worker-{wid}")
        proc.start()
        self.workers[wid] = _Worker(wid, proc, inbox, since=time.time())

    def _replace(self, w: _Worker) -> None:
        if w.proc.is_alive():
            w.proc.terminate()
        w.proc.join(timeout=10)
        if w.proc.is_alive():
            w.proc.kill()
            w.proc.join(timeout=5)
        del self.workers[w.wid]
        self._start()

    def map(self, jobs: list[dict[str, Any]],
            on_result: Callable[[int, dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
        """Evaluate ``jobs``; returns one outcome per job, in order (failures included).

        ``on_result(index, outcome)`` is called as each outcome arrives (the search caches it).
        """
        results: dict[int, dict[str, Any]] = {}
        pending = list(range(len(jobs)))
        reported: set[int] = set()
        while len(results) < len(jobs):
            for w in list(self.workers.values()):  # hand out work to idle, ready workers
                if w.ready and w.job is None and pending:
                    w.job, w.since = pending.pop(0), time.time()
                    w.inbox.put((w.job, jobs[w.job]))
            try:
                kind, wid, idx, payload = self.outbox.get(timeout=0.5)
            except queue.Empty:
                kind = None
            if kind == "ready" and wid in self.workers:
                self.workers[wid].ready = True
            elif kind == "init_failed":
                self.close()
                raise RuntimeError(f"an evaluation worker could not start: {payload}")
            elif kind == "done" and wid in self.workers and self.workers[wid].job == idx:
                results[idx] = payload
                self.workers[wid].job = None
            self._police(results)
            for i in sorted(set(results) - reported):
                reported.add(i)
                if on_result is not None:
                    on_result(i, results[i])
        return [results[i] for i in range(len(jobs))]

    def _police(self, results: dict[int, dict[str, Any]]) -> None:
        """Fail the job of a worker that timed out or died, and replace the worker."""
        now = time.time()
        for w in list(self.workers.values()):
            if w.job is not None and self.timeout_s and now - w.since > self.timeout_s:
                results[w.job] = failed(f"timeout: no result after {self.timeout_s:g} s")
                self._replace(w)
            elif not w.proc.is_alive():
                if w.job is not None:
                    results[w.job] = failed(f"worker died (exit code {w.proc.exitcode})")
                elif not w.ready and w.proc.exitcode not in (None, 0):
                    pass  # an init failure arrives as a message; if not, the start timeout below fires
                self._replace(w)
            elif not w.ready and now - w.since > START_TIMEOUT_S:
                self.close()
                raise RuntimeError(f"an evaluation worker did not start within {START_TIMEOUT_S} s")

    def close(self) -> None:
        """Stop every worker (politely, then by force)."""
        for w in self.workers.values():
            if w.proc.is_alive():
                w.inbox.put(None)
        for w in self.workers.values():
            w.proc.join(timeout=5)
            if w.proc.is_alive():
                w.proc.terminate()
                w.proc.join(timeout=5)
        self.workers.clear()

    def __enter__(self) -> LocalPool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
