"""The one executor abstraction of a build: how its per-item stages (clean a book, clean a chunk of
documents) are spread over workers.

An executor is `map_items(fn, items) -> results`: `fn` applied to every item, results in input
order, streamed, and a failure of any call raises (a bug is never one item's problem). `fn` is a
picklable callable (`BookCleaner`, `ChunkCleaner`), so any executor can ship it: `process_pool` is
the plain one; pipelines/ passes executors that run one Prefect task per item, as datatrove's
pipelines take a local or a Slurm executor.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

Executor = Callable[[Callable[[Any], Any], Iterable[Any]], Iterable[Any]]


def process_pool(workers: int = 1) -> Executor:
    """`workers` processes (in this process for 1), at most 2 x workers items in flight, so a source
    streamed through it is never held whole."""

    def map_items(fn: Callable[[Any], Any], items: Iterable[Any]) -> Iterator[Any]:
        if workers <= 1:
            yield from map(fn, items)
            return
        with ProcessPoolExecutor(max_workers=workers) as pool:
            pending: deque[Future] = deque()
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) >= 2 * workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()

    return map_items
