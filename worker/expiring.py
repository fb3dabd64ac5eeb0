"""A small bounded store whose entries expire: the caches in front of the
catalogue (``catalog_cache``) and of Redis's item statistics (``redis_store``)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable

#: What ``Expiring.get`` returns for an absent or expired key (``None`` can be a value).
MISSING = object()


class Expiring:
    """Entries with an expiry time, evicted oldest-inserted first when full.

    An entry is put again when it has expired, so the keys in use stay in.
    ``get`` takes the time from the caller: a hot loop reads the clock once.
    """

    def __init__(self, maxsize: int, ttl: float, clock: Callable[[], float]) -> None:
        self.maxsize, self.ttl, self.clock = maxsize, ttl, clock
        self.data: OrderedDict[Hashable, tuple[float, object]] = OrderedDict()

    def get(self, key: Hashable, now: float) -> object:
        """The live value, or ``MISSING`` when absent or expired."""
        hit = self.data.get(key)
        return MISSING if hit is None or hit[0] < now else hit[1]

    def put(self, key: Hashable, value: object) -> None:
        self.data[key] = (self.clock() + self.ttl, value)
        self.data.move_to_end(key)
        while len(self.data) > self.maxsize:
            self.data.popitem(last=False)
