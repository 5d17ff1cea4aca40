"""A list of Python objects stored as one numpy byte buffer.

DataLoader workers are forked: touching a Python object bumps its refcount and copies its
memory page, so a list of annotation dicts slowly gets duplicated in every worker. One
buffer plus offsets is never written to, so workers keep sharing it.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterable

import numpy as np


class PackedList:
    def __init__(self, items: Iterable[object]):
        blobs = [pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL) for item in items]
        self._offsets = np.cumsum([0] + [len(b) for b in blobs], dtype=np.int64)
        self._buffer = np.frombuffer(b"".join(blobs), dtype=np.uint8)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, index: int) -> object:
        start, end = self._offsets[index], self._offsets[index + 1]
        return pickle.loads(memoryview(self._buffer[start:end]))
