"""Automatic prefix caching: the keys/values of prompt blocks seen before, reused by later
prompts that start with the same tokens, so their prefill computes only the rest.

The system prompt and the RAG instruction open every request alike, and so do the earlier turns
of a conversation. As in vLLM's automatic prefix caching, a prompt is cut into full blocks of
``BLOCK`` tokens and each block's keys/values are stored under the block's tokens *and* the
block before it, so an entry is the cache of exactly one token prefix: the chain is a trie, and
the dictionary compares token tuples, not hashes, so no collision can return another prefix's
cache. Matching is by token ids only; the keys/values depend on the model's weights too, so the
whole cache is dropped when any parameter was replaced or changed in place (``_version``).

Memory is bounded in tokens; the least recently used block goes first. A lookup touches a
prompt's blocks deepest first, so a block is always older than its ancestors and eviction takes
leaves before the prefixes they hang from (a parent evicted first would strand its children).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from torch import Tensor, nn

BLOCK = 16  # tokens per cached block (vLLM's default)


@dataclass
class _Block:
    id: int
    k: Tensor  # [layers, kv_heads, BLOCK, head_dim]
    v: Tensor


class PrefixCache:
    """Blocks of prompt keys/values by (previous block's id, the block's tokens)."""

    def __init__(self, model: nn.Module, max_tokens: int) -> None:
        if max_tokens < 0:
            raise ValueError(f"prefix cache size must be >= 0 tokens, got {max_tokens}")
        self.model = model
        self.max_blocks = max_tokens // BLOCK
        self.blocks: OrderedDict[tuple[int, tuple[int, ...]], _Block] = OrderedDict()
        self._next_id = 1  # 0: the empty prefix every chain starts from
        self._weights = self._weights_version()

    def _weights_version(self) -> tuple[tuple[int, int], ...]:
        return tuple((id(p), p._version) for p in self.model.parameters())

    def _check_weights(self) -> None:
        """Forget every block when the model's weights are not those they were computed with."""
        version = self._weights_version()
        if version != self._weights:
            self.blocks.clear()
            self._weights = version

    def _chain(self, prompt: list[int], blocks: int) -> list[tuple[int, tuple[int, ...]]]:
        """Keys of the first ``blocks`` blocks of ``prompt`` that are cached, in order."""
        keys, parent = [], 0
        for i in range(blocks):
            key = (parent, tuple(prompt[i * BLOCK : (i + 1) * BLOCK]))
            block = self.blocks.get(key)
            if block is None:
                break
            keys.append(key)
            parent = block.id
        return keys

    def lookup(self, prompt: list[int]) -> list[_Block]:
        """The cached blocks that open ``prompt``, leaving at least its last token to prefill
        (its logits are the first token's)."""
        if not self.max_blocks:
            return []
        self._check_weights()
        keys = self._chain(prompt, (len(prompt) - 1) // BLOCK)
        for key in reversed(keys):  # deepest first: ancestors end up the most recent
            self.blocks.move_to_end(key)
        return [self.blocks[key] for key in keys]

    def insert(self, prompt: list[int], k: Tensor, v: Tensor) -> None:
        """Store the full blocks of ``prompt`` from its slot's keys/values
        [layers, kv_heads, >= len(prompt), head_dim] (copies: the slot is reused)."""
        if not self.max_blocks:
            return
        self._check_weights()
        full = min(len(prompt) // BLOCK, self.max_blocks)
        keys = self._chain(prompt, full)
        parent = self.blocks[keys[-1]].id if keys else 0
        for i in range(len(keys), full):
            span = slice(i * BLOCK, (i + 1) * BLOCK)
            key = (parent, tuple(prompt[span]))
            block = _Block(self._next_id, k[:, :, span].clone(), v[:, :, span].clone())
            self._next_id += 1
            self.blocks[key] = block
            keys.append(key)
            parent = block.id
        for key in reversed(keys):
            self.blocks.move_to_end(key)
        while len(self.blocks) > self.max_blocks:
            self.blocks.popitem(last=False)

    @property
    def tokens(self) -> int:
        return len(self.blocks) * BLOCK
