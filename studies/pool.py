"""Where a study's training runs happen: one after another in this process, or several at once.

``RunPool`` runs a job either inline (``workers`` 1, in the order jobs are submitted) or in
``workers`` spawned processes, each with an equal share of the cores. On 2 cores, two one-thread
runs at a time did an AdvMix epoch's work in about the time one two-thread run did, and the
cheaper arms (RandMix, nominal, the oracle, evaluation) about 1.3x faster, since the small
networks leave a second thread idle much of the time (docs/results-16k-4ep.md against
docs/results-16k.md: two sittings, not one run). Only the parent records timings, so
``timings.json`` has one writer.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor, as_completed

import torch


class RunPool:
    """Jobs are module-level functions returning ``(row, seconds, step)``: a results row, the
    seconds the job took and the name those seconds are recorded under."""

    def __init__(self, workers: int, timings):
        self.timings = timings
        self.pending: dict[Future, object] = {}
        self.executor = None
        if workers > 1:
            threads = max(1, (os.cpu_count() or 1) // workers)
            self.executor = ProcessPoolExecutor(
                workers, mp_context=multiprocessing.get_context("spawn"),
                initializer=use_threads, initargs=(threads,),
            )  # fmt: skip

    def __enter__(self) -> RunPool:
        return self

    def __exit__(self, *failure) -> None:
        if self.executor is not None:
            self.executor.shutdown(cancel_futures=True)

    def submit(self, key, job: Callable, *args) -> None:
        """Start ``job(*args)``; ``key`` names it in ``next_done``."""
        if self.executor is None:
            future = Future()
            future.set_result(job(*args))
        else:
            future = self.executor.submit(job, *args)
        self.pending[future] = key

    def next_done(self) -> tuple | None:
        """(key, row) of a job that has finished, its seconds recorded; None when none is left."""
        if not self.pending:
            return None
        future = next(as_completed(self.pending))
        key = self.pending.pop(future)
        row, seconds, step = future.result()
        self.timings.record(step, seconds)
        return key, row


def use_threads(threads: int) -> None:
    torch.set_num_threads(threads)


def add_workers_option(parser: argparse.ArgumentParser) -> None:
    """``--workers N`` (default 1) for a study's command line; ``checked_workers`` validates it."""
    parser.add_argument("--workers", type=int, default=1,
                        help="training runs at once, each in its own process with an equal share "
                        "of the cores [default: 1]")  # fmt: skip


def checked_workers(parser: argparse.ArgumentParser, workers: int) -> int:
    if workers < 1:
        parser.error(f"--workers must be at least 1 (got {workers})")
    return workers
