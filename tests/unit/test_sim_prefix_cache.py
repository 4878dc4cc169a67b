"""Prefix-cache block chaining, pinning and LRU eviction within a fixed capacity."""

from __future__ import annotations

import pytest

from vgate_worker.sim.prefix_cache import PrefixCache, block_hashes

BS = 16


def toks(seed: int, n: int) -> list[int]:
    return [seed * 1000 + i for i in range(n)]


def serve(cache: PrefixCache, hashes: list[int], anonymous: int = 0) -> None:
    """One request start to finish: pin, prefill (compute), release."""
    alloc = cache.allocate(hashes, anonymous, len(hashes))
    cache.mark_computed(alloc)
    cache.free(alloc)


def test_only_full_blocks_are_hashed() -> None:
    assert len(block_hashes(toks(1, 15), BS)) == 0
    assert len(block_hashes(toks(1, 16), BS)) == 1
    assert len(block_hashes(toks(1, 47), BS)) == 2


def test_hashes_chain_on_the_prefix() -> None:
    base = toks(1, 48)
    h = block_hashes(base, BS)
    changed_first = [-1, *base[1:]]
    changed_last = [*base[:40], -1, *base[41:]]
    assert all(x != y for x, y in zip(block_hashes(changed_first, BS), h, strict=True))
    assert block_hashes(changed_last, BS)[:2] == h[:2]
    assert block_hashes(changed_last, BS)[2] != h[2]
    # The same 16 tokens after a different prefix are a different block.
    shifted = block_hashes(toks(2, 16) + base[:16], BS)
    assert shifted[1] != h[0]


def test_released_blocks_stay_cached_and_hit() -> None:
    cache = PrefixCache(capacity_tokens=10 * BS, block_size=BS)
    h = block_hashes(toks(1, 64), BS)
    first = cache.allocate(h, anonymous=1, max_hit_blocks=4)
    assert first.hit_blocks == 0
    assert cache.used_blocks == 5
    cache.mark_computed(first)
    cache.free(first)
    assert cache.used_blocks == 0
    assert cache.usage() == 0.0
    assert cache.match(h) == 4
    # A full hit is capped: vLLM recomputes the last prompt token.
    second = cache.allocate(h, anonymous=0, max_hit_blocks=3)
    assert second.hit_blocks == 3


def test_shared_blocks_are_pinned_once() -> None:
    cache = PrefixCache(capacity_tokens=10 * BS, block_size=BS)
    h = block_hashes(toks(1, 32), BS)
    a = cache.allocate(h, 0, 2)
    b = cache.allocate(h, 0, 2)
    assert cache.used_blocks == 2
    cache.free(a)
    assert cache.used_blocks == 2  # still pinned by b
    cache.free(b)
    assert cache.used_blocks == 0


def test_lru_eviction_keeps_recently_used_prefixes() -> None:
    cache = PrefixCache(capacity_tokens=4 * BS, block_size=BS)
    a, b, c = (block_hashes(toks(s, 32), BS) for s in (1, 2, 3))
    serve(cache, a)
    serve(cache, b)
    serve(cache, a)  # touch a: b is now least recently used
    serve(cache, c)
    assert cache.match(a) == 2
    assert cache.match(b) == 0
    assert cache.match(c) == 2
    assert cache.cached_blocks <= cache.num_blocks


def test_eviction_takes_the_tail_of_a_prefix_first() -> None:
    cache = PrefixCache(capacity_tokens=3 * BS, block_size=BS)
    a = block_hashes(toks(1, 48), BS)
    serve(cache, a)
    serve(cache, block_hashes(toks(9, 16), BS))
    assert cache.match(a) == 2


def test_blocks_hit_only_once_computed() -> None:
    cache = PrefixCache(capacity_tokens=10 * BS, block_size=BS)
    h = block_hashes(toks(1, 48), BS)
    first = cache.allocate(h, 0, 3)
    # An identical request arriving during the first one's prefill gets no hit ...
    twin = cache.allocate(h, 0, 3)
    assert twin.hit_blocks == 0
    assert cache.used_blocks == 3  # ... though it shares the physical blocks
    cache.mark_computed(first)
    assert cache.match(h) == 3
    cache.free(first)
    cache.free(twin)
    assert cache.match(h) == 3


def test_uncomputed_blocks_are_dropped_on_release() -> None:
    cache = PrefixCache(capacity_tokens=10 * BS, block_size=BS)
    h = block_hashes(toks(1, 48), BS)
    cache.free(cache.allocate(h, 0, 3))  # cancelled before its prefill finished
    assert cache.match(h) == 0
    assert cache.cached_blocks == 0


def test_pinned_blocks_are_never_evicted() -> None:
    cache = PrefixCache(capacity_tokens=4 * BS, block_size=BS)
    running = cache.allocate(block_hashes(toks(1, 48), BS), 0, 3)
    other = block_hashes(toks(2, 32), BS)
    assert not cache.can_allocate(other, 0)
    with pytest.raises(MemoryError):
        cache.allocate(other, 0, 2)
    assert cache.can_allocate(other[:1], 0)
    cache.free(running)
    assert cache.can_allocate(other, 2)


def test_capacity_is_never_exceeded() -> None:
    cache = PrefixCache(capacity_tokens=8 * BS, block_size=BS)
    for seed in range(50):
        alloc = cache.allocate(block_hashes(toks(seed, 5 * BS), BS), 2, 4)
        assert cache.cached_blocks + 2 <= cache.num_blocks
        cache.mark_computed(alloc)
        cache.free(alloc)
    assert cache.cached_blocks <= cache.num_blocks
