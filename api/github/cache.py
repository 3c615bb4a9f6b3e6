"""A small TTL + LRU cache of GitHub answers, keyed by a digest of the token."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

CacheKey = tuple[str, ...]


def token_digest(token: str) -> str:
    """What stands for a token in keys: never the token itself."""
    return hashlib.sha256(token.encode()).hexdigest()


class TTLCache:
    """Entries live ``ttl`` seconds of ``clock`` time; at most ``size`` kept."""

    def __init__(self, *, ttl: float, size: int, clock: Callable[[], float]) -> None:
        self._ttl = ttl
        self._size = size
        self._clock = clock
        self._entries: OrderedDict[CacheKey, tuple[float, Any]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: CacheKey) -> Any | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, value = entry
        if expires <= self._clock():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return value

    def put(self, key: CacheKey, value: Any) -> None:
        if self._ttl <= 0 or self._size <= 0:
            return
        self._entries[key] = (self._clock() + self._ttl, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)

    def forget(self, digest: str) -> None:
        """Drop every entry of one token (keys start with its digest)."""
        for key in [key for key in self._entries if key[0] == digest]:
            del self._entries[key]
