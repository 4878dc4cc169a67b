"""A KV-cache block pool with automatic prefix caching, modelled on vLLM's.

The prompt's token ids are cut into fixed-size blocks; only full blocks are hashed, and
each block's hash chains its parent's (``hash((parent, block_tokens))``), so a block hit
implies the whole prefix before it matched. A fresh block only becomes a hit for
others once its owner's prefill has computed it (``mark_computed``), so identical requests
arriving together both pay for prefill, as in vLLM. Blocks held by running sequences are
pinned; released blocks stay cached and are evicted least-recently-used when room is needed.
Like vLLM, a request's blocks are released tail-first, so the end of a prefix is evicted
before its beginning. Capacity is fixed: the cache never grows past ``num_blocks``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace

# Seed of the hash chain; any fixed value works since ints hash deterministically.
_ROOT_HASH = 0x5EED


def block_hashes(token_ids: Sequence[int], block_size: int, salt: str | None = None) -> list[int]:
    """Chained hashes of the full blocks of ``token_ids`` (a trailing partial block is not hashed).

    ``salt`` (a LoRA adapter's name) starts a chain of its own: an adapter's KV is not the base model's.
    """
    hashes: list[int] = []
    parent = _ROOT_HASH if salt is None else hash((_ROOT_HASH, salt))
    for start in range(0, len(token_ids) - block_size + 1, block_size):
        parent = hash((parent, tuple(token_ids[start : start + block_size])))
        hashes.append(parent)
    return hashes


@dataclass(frozen=True)
class Allocation:
    """Blocks pinned for one sequence: its hashed prompt blocks plus anonymous ones."""

    hashes: tuple[int, ...]
    anonymous: int
    hit_blocks: int

    @property
    def blocks(self) -> int:
        """Blocks the sequence holds."""
        return len(self.hashes) + self.anonymous


class PrefixCache:
    """A fixed pool of ``num_blocks`` KV blocks with LRU-evicted cached prefixes."""

    def __init__(self, capacity_tokens: int, block_size: int = 16) -> None:
        if block_size < 1 or capacity_tokens < block_size:
            raise ValueError("capacity_tokens must hold at least one block")
        self.block_size = block_size
        self.num_blocks = capacity_tokens // block_size
        self._pinned: dict[int, int] = {}  # hash -> number of sequences using it
        self._evictable: OrderedDict[int, None] = OrderedDict()  # oldest first
        self._anonymous = 0
        self._pending: set[int] = set()  # allocated, not yet computed by a prefill

    @property
    def used_blocks(self) -> int:
        """Blocks held by running sequences (cached-but-free blocks are not counted)."""
        return len(self._pinned) + self._anonymous

    @property
    def cached_blocks(self) -> int:
        """Blocks whose contents are known, pinned or evictable."""
        return len(self._pinned) + len(self._evictable)

    def usage(self) -> float:
        """Fraction of the pool held by running sequences, as ``vllm:kv_cache_usage_perc``."""
        return self.used_blocks / self.num_blocks

    def contains(self, block_hash: int) -> bool:
        """Whether a block with this hash is held (pinned, pending or evictable)."""
        return block_hash in self._pinned or block_hash in self._evictable

    def match(self, hashes: Sequence[int]) -> int:
        """Number of leading blocks of ``hashes`` cached with computed contents."""
        hit = 0
        for h in hashes:
            if not self.contains(h) or h in self._pending:
                break
            hit += 1
        return hit

    def mark_computed(self, allocation: Allocation) -> None:
        """The owner's prefill is done: its blocks can now be hits for other requests."""
        self._pending.difference_update(allocation.hashes)

    def can_allocate(self, hashes: Sequence[int], anonymous: int) -> bool:
        """Whether ``allocate`` would succeed without touching blocks pinned by others."""
        new = sum(1 for h in hashes if not self.contains(h)) + anonymous
        revived = sum(1 for h in hashes if h in self._evictable)
        return new <= self.num_blocks - self.used_blocks - revived

    def allocate(self, hashes: Sequence[int], anonymous: int, max_hit_blocks: int) -> Allocation:
        """Pin ``hashes`` (reusing cached blocks) and ``anonymous`` fresh blocks.

        ``max_hit_blocks`` caps the reported hit, as vLLM always recomputes at least the
        prompt's last token. Raises ``MemoryError`` if the pool cannot hold them.
        """
        if not self.can_allocate(hashes, anonymous):
            raise MemoryError("not enough free KV blocks")
        hit = min(self.match(hashes), max_hit_blocks)
        for h in hashes:
            if h in self._pinned:
                self._pinned[h] += 1
                continue
            if h in self._evictable:
                del self._evictable[h]
            else:
                self._make_room(1)
                self._pending.add(h)
            self._pinned[h] = 1
        self._make_room(anonymous)
        self._anonymous += anonymous
        return Allocation(tuple(hashes), anonymous, hit)

    def extend(self, allocation: Allocation, blocks: int) -> Allocation | None:
        """``blocks`` more fresh blocks for a growing sequence, or None when the pool has no room."""
        if blocks > self.num_blocks - self.used_blocks:
            return None
        self._make_room(blocks)
        self._anonymous += blocks
        return replace(allocation, anonymous=allocation.anonymous + blocks)

    def free(self, allocation: Allocation) -> None:
        """Unpin a sequence's blocks; hashed ones stay cached, tail first in eviction order."""
        self._anonymous -= allocation.anonymous
        for h in reversed(allocation.hashes):
            refs = self._pinned[h] - 1
            if refs:
                self._pinned[h] = refs
                continue
            del self._pinned[h]
            if h in self._pending:
                self._pending.discard(h)  # never computed: nothing worth keeping
            else:
                self._evictable[h] = None

    def _make_room(self, blocks: int) -> None:
        while self.cached_blocks + self._anonymous + blocks > self.num_blocks:
            self._evictable.popitem(last=False)
