"""One progress reporter for every long loop (tqdm is a core dependency)."""

from __future__ import annotations

import sys
import time
from typing import Any, Iterable, Iterator, Mapping, Optional, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


class Progress:
    """A tqdm bar on stderr, or nothing when ``enabled`` is False.

    Args:
        total: number of units expected (None when unknown).
        desc: label shown before the bar.
        enabled: False turns every call into a no-op (``--quiet``).
        initial: units already done (a resumed run starts its bar there).
        unit: name of one unit ("step", "fit", "trip").
        unit_scale: show 1.2M instead of 1200000.
        leave: keep the finished bar on screen.
    """

    def __init__(self, total: Optional[int], desc: str, enabled: bool = True, *, initial: int = 0,
                 unit: str = "it", unit_scale: bool = False, leave: bool = True) -> None:
        self.total, self.desc, self.enabled = total, desc, enabled
        self.done = initial
        self.start = time.perf_counter()
        # Off a terminal (a log file, CI) a bar redraw is a new line: one line every 30 s is progress
        # without flooding the log.
        interval = 0.1 if sys.stderr.isatty() else 30.0
        self._bar = (tqdm(total=total, initial=initial, desc=desc, unit=unit, unit_scale=unit_scale,
                          dynamic_ncols=True, leave=leave, file=sys.stderr, mininterval=interval,
                          maxinterval=max(10.0, interval)) if enabled else None)

    def update(self, n: int = 1, info: Optional[Mapping[str, Any]] = None) -> None:
        """Advance by ``n`` units; ``info`` (e.g. the loss) is shown after the bar."""
        self.done += n
        if self._bar is None:
            return
        if info:
            self._bar.set_postfix({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in info.items()},
                                  refresh=False)
        self._bar.update(n)

    def note(self, text: str) -> None:
        """Show ``text`` after the bar without advancing it (e.g. the current iterate)."""
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=False)

    def write(self, text: str) -> None:
        """Print a line above the bar (never breaks the bar; silent when disabled)."""
        if self._bar is not None:
            self._bar.write(text, file=sys.stderr)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def progress(iterable: Iterable[T], total: Optional[int], desc: str, enabled: bool = True,
             unit: str = "it", leave: bool = False) -> Iterator[T]:
    """Iterate ``iterable`` under a :class:`Progress` bar (plain iteration when disabled)."""
    if not enabled:
        yield from iterable
        return
    with Progress(total, desc, enabled, unit=unit, leave=leave) as bar:
        for item in iterable:
            yield item
            bar.update(1)
