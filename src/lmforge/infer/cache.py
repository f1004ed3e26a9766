"""The engine's key/value cache: one preallocated slot per concurrent sequence, written by a
prefill of some slots or a one-token decode of many, each at its own position. Its own module so
the engine's scheduling reads without the indexing that makes a decode step cheap."""

from __future__ import annotations

import torch
from torch import Tensor

from lmforge.model import Transformer


class SlotCache:
    """Keys/values of every slot: [layers, slots, kv_heads, max_len, head_dim].

    Speaks the model's cache protocol for one forward pass at a time: either a prefill of
    selected slots from one position (0, or the end of a prefix they reuse), or a one-token
    decode of several slots, each at its own position. Everything a decode needs besides the
    keys/values (row and position indices, the last key) is worked out once per step in
    ``select``, not once per layer.
    """

    def __init__(self, model: Transformer, slots: int, max_len: int) -> None:
        c = model.config
        param = next(model.parameters())
        shape = (c.n_layers, slots, c.n_kv_heads, max_len, c.head_dim)
        self.k = torch.zeros(shape, device=param.device, dtype=param.dtype)
        self.v = torch.zeros(shape, device=param.device, dtype=param.dtype)
        self.length = 0  # the prefill's first position (the model reads it as the start)
        self._rows = torch.zeros(0, dtype=torch.long)
        self._positions = torch.zeros(0, dtype=torch.long)
        self._local = torch.zeros(0, dtype=torch.long)  # 0..n-1: rows of a view of the slots
        self._end = 0
        self._slots: slice | None = None
        self._single: int | None = None  # the position, when one slot decodes
        self._decoding = False

    def select(self, rows: list[int], positions: list[int], decoding: bool) -> None:
        """The slots of the next pass: a decode writes each row's key at its own position; a
        prefill writes from ``positions[0]``, the same for every row."""
        device = self.k.device
        self._rows = torch.tensor(rows, dtype=torch.long, device=device)
        self._positions = torch.tensor(positions, dtype=torch.long, device=device)
        self._decoding = decoding
        self.length = 0 if decoding else positions[0]
        self._end = max(positions) + 1
        consecutive = rows == list(range(rows[0], rows[0] + len(rows)))
        self._slots = slice(rows[0], rows[0] + len(rows)) if consecutive else None
        self._local = torch.arange(len(rows), device=device)
        self._single = positions[0] if len(rows) == 1 else None

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        if not self._decoding:  # right-padded prompts of the selected slots from one position
            start, end = self.length, self.length + k.shape[2]
            self.k[layer, self._rows, :, start:end] = k
            self.v[layer, self._rows, :, start:end] = v
            if not start:
                return k, v
            return self.k[layer, self._rows, :, :end], self.v[layer, self._rows, :, :end]
        if self._slots is not None:  # views, not gathered copies, of the cache
            keys, values = self.k[layer, self._slots], self.v[layer, self._slots]
            if self._single is not None:  # one stream: a plain slice write
                keys[:, :, self._single] = k[:, :, 0]
                values[:, :, self._single] = v[:, :, 0]
            else:
                keys[self._local, :, self._positions] = k[:, :, 0]
                values[self._local, :, self._positions] = v[:, :, 0]
            return keys[:, :, : self._end], values[:, :, : self._end]
        self.k[layer, self._rows, :, self._positions] = k[:, :, 0]
        self.v[layer, self._rows, :, self._positions] = v[:, :, 0]
        return self.k[layer, self._rows, :, : self._end], self.v[layer, self._rows, :, : self._end]
