"""map() over worker processes, in order: for analyses whose items are pure Python work and independent (each
phase curve, each run's dynamics), so that threads would not help and the results cannot depend on the process."""
from __future__ import annotations

from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def process_map(fn: Callable[[T], R], items: Iterable[T], workers: int = 1) -> Iterator[R]:
    """fn over items, results in the items' order: in this process when workers is 1, else over `workers` processes
    (fn must be a module-level function; items and results are sent between processes). Closing the iterator early
    cancels what has not started."""
    items = list(items)
    if workers <= 1 or len(items) <= 1:
        yield from map(fn, items)
        return
    from concurrent.futures import ProcessPoolExecutor

    pool = ProcessPoolExecutor(max_workers=min(workers, len(items)))
    try:
        yield from pool.map(fn, items)
    finally:
        pool.shutdown(cancel_futures=True)
