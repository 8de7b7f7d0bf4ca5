"""The caching allocator replayed: each rule of c10's CUDACachingAllocator in closed form."""
import pytest

from bench.project.allocator import CachingAllocator, OutOfMemory, replay, round_size, segment_size

MiB = 1 << 20


def test_requests_round_to_512_bytes_and_segments_to_the_pools_sizes():
    assert [round_size(n) for n in (1, 512, 513, 4096)] == [512, 512, 1024, 4096]
    assert segment_size(1000) == segment_size(MiB) == 2 * MiB        # the small pool's segment
    assert segment_size(MiB + 512) == segment_size(10 * MiB - 512) == 20 * MiB  # a large request under 10 MiB
    assert segment_size(11 * MiB) == 12 * MiB and segment_size(12 * MiB) == 12 * MiB  # else rounded to 2 MiB


def test_small_and_large_requests_share_their_pools_segments():
    a = CachingAllocator()
    small = [a.malloc(1000) for _ in range(3)]
    assert a.reserved == 2 * MiB and a.allocated == 3 * 1024
    large = [a.malloc(5 * MiB) for _ in range(4)]  # four 5 MiB blocks fill one 20 MiB segment
    assert a.reserved == 2 * MiB + 20 * MiB
    a.malloc(5 * MiB)
    assert a.reserved == 2 * MiB + 40 * MiB
    assert len({b.segment for b in small}) == 1 and len({b.segment for b in large}) == 1


def test_a_large_block_is_split_only_when_more_than_1_MiB_would_remain():
    a = CachingAllocator()
    b = a.malloc(11 * MiB)  # a 12 MiB segment: 1 MiB would remain, so the block keeps it
    assert b.size == 12 * MiB and a.allocated == 12 * MiB and b.next is None


def test_a_cached_block_split_for_a_smaller_request_leaves_a_larger_one_unserved():
    """Fragmentation: 30 MiB freed, 10 MiB carved out of it, and the next 30 MiB request needs a new
    segment although only 40 MiB are live: 60 MiB reserved."""
    a = CachingAllocator()
    a.free(a.malloc(30 * MiB))
    assert a.reserved == 30 * MiB and a.allocated == 0  # freed, still cached
    small = a.malloc(10 * MiB)
    a.malloc(30 * MiB)
    assert a.reserved == 60 * MiB and a.allocated == 40 * MiB
    a.free(small)  # merged back with its free neighbour: the whole 30 MiB serves a request again
    a.malloc(30 * MiB)
    assert a.reserved == 60 * MiB


def test_best_fit_takes_the_smallest_cached_block_that_serves():
    a = CachingAllocator()
    big, mid = a.malloc(40 * MiB), a.malloc(24 * MiB)
    a.free(big)
    a.free(mid)
    assert a.malloc(22 * MiB).segment == mid.segment  # 24 MiB serves and is the smaller


def test_empty_cache_returns_wholly_free_segments_only():
    a = CachingAllocator()
    keep = a.malloc(5 * MiB)
    a.free(a.malloc(5 * MiB))  # a free part of keep's segment: not returned
    a.free(a.malloc(30 * MiB))
    assert a.reserved == 50 * MiB
    a.empty_cache()
    assert a.reserved == 20 * MiB and keep.segment in a.segments


def test_replay_reads_the_reserve_after_each_step():
    """Weights (an unnamed hold and a named 12 MiB tensor) then a step that allocates 30 MiB,
    frees it, and allocates 10 MiB it keeps: the next step drops that and begins again."""
    before = [(-1, 4 * MiB), (7, 12 * MiB)]
    step = [(1, 30 * MiB), (1, -1), (2, 10 * MiB)]
    reads = replay(before + step, len(before), steps=3)
    # the hold's 20 MiB segment also serves the 12 MiB tensor (best fit: its 16 MiB rest); the step's 30 MiB
    # needs a segment of its own, and the 10 MiB is carved from it once freed: 50 MiB, the same every step
    assert reads.reserved == [50 * MiB] * 3 and reads.retries == [0] * 3
    # on a 40 MiB device: the 30 MiB cannot join the 20 MiB segment, which holds live tensors: out of memory
    with pytest.raises(OutOfMemory):
        replay(before + step, len(before), steps=3, capacity=40 * MiB)


def test_a_retry_is_counted_in_the_step_that_needs_it():
    """20 MiB made and freed, then 50 MiB, on a 60 MiB device: the first step finds the cached 20 MiB
    segment in the way and returns it once; from the second on, the 20 MiB is carved from the cached
    50 MiB block and merged back when freed, so the 50 MiB request finds it whole: no retry."""
    step = [(1, 20 * MiB), (1, -1), (2, 50 * MiB), (2, -1)]
    reads = replay(step, 0, steps=3, capacity=60 * MiB)
    assert reads.retries == [1, 0, 0] and reads.reserved == [50 * MiB] * 3
