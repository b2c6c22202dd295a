"""A thread-safe LRU bounded in bytes, with single-flight computation of missing entries."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


class ByteLRU(Generic[V]):
    """Least-recently-used cache holding at most max_bytes (as measured by size_of).

    get_or_compute runs compute once per missing key even when many threads ask at the same
    time: 32 clients asking for the four tiles of one stored chunk decode it once, not four times.
    """

    def __init__(self, max_bytes: int, size_of: Callable[[V], int]) -> None:
        self.max_bytes = max(0, int(max_bytes))
        self._size_of = size_of
        self._items: OrderedDict[Hashable, tuple[V, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._inflight: dict[Hashable, threading.Lock] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def get(self, key: Hashable) -> V | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            self._items.move_to_end(key)
            return item[0]

    def put(self, key: Hashable, value: V) -> None:
        size = self._size_of(value)
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            self._items[key] = (value, size)
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, (_, dropped) = self._items.popitem(last=False)
                self._bytes -= dropped

    def get_or_compute(self, key: Hashable, compute: Callable[[], V]) -> V:
        value = self.get(key)
        if value is not None:
            self.hits += 1
            return value
        if self.max_bytes == 0:
            self.misses += 1
            return compute()
        with self._lock:
            key_lock = self._inflight.setdefault(key, threading.Lock())
        try:
            with key_lock:
                value = self.get(key)  # another thread may have computed it meanwhile
                if value is None:
                    self.misses += 1
                    value = compute()
                    self.put(key, value)
                else:
                    self.hits += 1
        finally:
            with self._lock:
                if self._inflight.get(key) is key_lock:
                    del self._inflight[key]
        return value

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0
