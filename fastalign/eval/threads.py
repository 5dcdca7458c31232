"""Independent pieces of CPU work side by side on Python threads, each on one torch thread.

A multi-threaded torch op ends when its slowest thread does. A loop of hundreds of small ops
(the few-shot fits) therefore crawls whenever one of torch's threads is descheduled: with two
other busy processes on the 2-core build machine the fits ran 3-4x slower on two intra-op
threads than on one. Independent units on their own threads never wait for each other, and on
an idle machine are as fast (torch releases the GIL inside its ops). Each unit's ops are
single-threaded, so results do not depend on how many threads run the units or on the load.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, List, Sequence, TypeVar

import torch

__all__ = ["map_units"]

T = TypeVar("T")
R = TypeVar("R")


@contextmanager
def _one_intra_op_thread() -> Iterator[int]:
    """torch's intra-op thread count set to 1 for the block (it is process-wide); yields the old count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield before
    finally:
        torch.set_num_threads(before)


def map_units(fn: Callable[[T], R], units: Sequence[T], device: torch.device,
              wrap: Callable[[Iterable[R]], Iterable[R]] = lambda it: it) -> List[R]:
    """``[fn(u) for u in units]``, in order.

    On the CPU the units run on as many Python threads as torch had intra-op threads, each op on
    one thread (restored afterwards); elsewhere one after another (a GPU queues the work itself).

    Args:
        fn: the work of one unit; must not change torch's thread settings.
        units: the units, in the order of the results.
        device: where the work runs.
        wrap: wraps the iterator of results as they come, in order (a progress bar).
    """
    if device.type != "cpu":
        return list(wrap(fn(u) for u in units))
    with _one_intra_op_thread() as workers:
        if workers <= 1 or len(units) <= 1:
            return list(wrap(fn(u) for u in units))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fastalign-unit") as pool:
            return list(wrap(pool.map(fn, units)))
