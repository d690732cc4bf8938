"""A bounded background reader: decoding and resampling overlap the network."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")
_ITEM, _END, _ERROR = "item", "end", "error"


class ReadAhead(Generic[T]):
    """Iterates ``items`` in a background thread, at most ``capacity`` units ahead of the consumer.

    ``size(item)`` gives an item's units; the reader waits while the items not yet taken add up
    to ``capacity`` (one item is always let through, however large), so memory stays flat
    however long the input. An exception raised by ``items`` is raised to the consumer at the
    same place in the sequence. :meth:`close` (called on leaving the ``with`` block, on any
    exception or KeyboardInterrupt too) stops the reader, closes ``items`` in the reader's own
    thread (a generator's clean-up, such as ending a decoder process, runs where it ran) and
    joins the thread.
    """

    def __init__(self, items: Iterator[T], size: Callable[[T], int], capacity: int, name: str = "clapsep-reader"):
        self._items, self._size, self._capacity = items, size, capacity
        self._queue: deque[tuple[str, Any, int]] = deque()
        self._queued = 0
        self._stop = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            try:
                for item in self._items:
                    units = self._size(item)
                    with self._cond:
                        while self._queue and self._queued + units > self._capacity and not self._stop:
                            self._cond.wait()
                        if self._stop:
                            return
                        self._queue.append((_ITEM, item, units))
                        self._queued += units
                        self._cond.notify_all()
            finally:
                close = getattr(self._items, "close", None)
                if close is not None:
                    close()
        except BaseException as err:  # noqa: BLE001 - handed to the consumer, raised there
            self._put(_ERROR, err)
        else:
            self._put(_END, None)

    def _put(self, kind: str, value: Any) -> None:
        with self._cond:
            self._queue.append((kind, value, 0))
            self._cond.notify_all()

    def __iter__(self) -> Iterator[T]:
        while True:
            with self._cond:
                while not self._queue:
                    self._cond.wait(0.5)  # a timeout keeps Ctrl-C responsive everywhere
                kind, value, units = self._queue.popleft()
                self._queued -= units
                self._cond.notify_all()
            if kind == _END:
                return
            if kind == _ERROR:
                raise value
            yield value

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._queue.clear()
            self._queued = 0
            self._cond.notify_all()
        self._thread.join()

    def __enter__(self) -> ReadAhead[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
