"""PyTorch's CUDA caching allocator, replayed: what `torch.cuda.memory_reserved()` would read for a
step's allocations and frees (bench/project/memory.py records them, in dispatch order).

The rules are c10/cuda/CUDACachingAllocator.cpp's defaults (no PYTORCH_CUDA_ALLOC_CONF):
- a request is rounded up to 512 bytes;
- requests of at most 1 MiB come from the small pool, whose segments are 2 MiB; larger ones from the
  large pool, whose segments are 20 MiB for a request under 10 MiB, else the request rounded up to 2 MiB;
- a request takes the smallest cached free block of its pool that is large enough (best fit, the lower
  address first), split when the rest is worth keeping (small pool: at least 512 bytes; large pool:
  more than 1 MiB); only when none fits is a new segment allocated (cudaMalloc);
- a freed block is cached, merged with free neighbours of its own segment, never returned to the
  device; `empty_cache()` returns the segments that are wholly free;
- on a device of `capacity` bytes, a segment that would not fit first makes the allocator return
  every wholly free segment and try again (release_cached_blocks); only then is it out of memory.
So the reserve is the tensors' peak plus what rounding, splitting and caching leave unusable: it
depends on the order and the sizes of the allocations, which is why one factor over the peak cannot
hold for every job. Not modelled: streams other than the default one, expandable segments, other
processes on the device.
"""
from __future__ import annotations

import bisect
import dataclasses

MIN_BLOCK = 512
SMALL_SIZE = 1 << 20         # the small pool's largest request
SMALL_BUFFER = 2 << 20       # the small pool's segment
LARGE_BUFFER = 20 << 20      # the large pool's segment for a request under MIN_LARGE_ALLOC
MIN_LARGE_ALLOC = 10 << 20
ROUND_LARGE = 2 << 20


def round_size(n: int) -> int:
    return MIN_BLOCK if n < MIN_BLOCK else MIN_BLOCK * -(-n // MIN_BLOCK)


def segment_size(size: int) -> int:
    if size <= SMALL_SIZE:
        return SMALL_BUFFER
    if size < MIN_LARGE_ALLOC:
        return LARGE_BUFFER
    return ROUND_LARGE * -(-size // ROUND_LARGE)


@dataclasses.dataclass(eq=False)
class Block:
    addr: int
    size: int
    small: bool
    segment: int
    free: bool = True
    prev: "Block | None" = None
    next: "Block | None" = None


class OutOfMemory(Exception):
    pass


class CachingAllocator:
    def __init__(self, capacity: int | None = None):
        self.capacity = capacity
        self.pools: dict[bool, list[tuple[int, int, Block]]] = {True: [], False: []}  # free: (size, addr, block)
        self.segments: dict[int, int] = {}  # segment base -> its size
        self.next_addr = 0
        self.reserved = self.allocated = 0
        self.retries = 0  # times the capacity made it return its cache (c10 counts them as num_alloc_retries)

    def _cache(self, b: Block) -> None:
        b.free = True
        bisect.insort(self.pools[b.small], (b.size, b.addr, b))

    def _uncache(self, b: Block) -> None:
        pool = self.pools[b.small]
        del pool[bisect.bisect_left(pool, (b.size, b.addr))]

    def malloc(self, nbytes: int) -> Block:
        size = round_size(nbytes)
        small = size <= SMALL_SIZE
        pool = self.pools[small]
        i = bisect.bisect_left(pool, (size, -1))
        if i < len(pool):
            b = pool.pop(i)[2]
        else:  # cudaMalloc a new segment
            seg = segment_size(size)
            if self.capacity is not None and self.reserved + seg > self.capacity:
                self.empty_cache()  # what is cached goes back to the device, and the allocation is tried again
                self.retries += 1
                if self.reserved + seg > self.capacity:
                    raise OutOfMemory(f"{size} bytes with {self.allocated} allocated of {self.capacity}")
            b = Block(self.next_addr, seg, small, self.next_addr)
            self.segments[b.addr] = seg
            self.next_addr += seg
            self.reserved += seg
        rest = b.size - size
        if rest >= MIN_BLOCK if small else rest > SMALL_SIZE:
            tail = Block(b.addr + size, rest, small, b.segment, prev=b, next=b.next)
            if b.next is not None:
                b.next.prev = tail
            b.next, b.size = tail, size
            self._cache(tail)
        b.free = False
        self.allocated += b.size
        return b

    def free(self, b: Block) -> None:
        self.allocated -= b.size
        for side in (b.prev, b.next):
            if side is not None and side.free:
                self._uncache(side)
                if side is b.prev:
                    side.size += b.size
                    side.next = b.next
                    if b.next is not None:
                        b.next.prev = side
                    b = side
                else:
                    b.size += side.size
                    b.next = side.next
                    if side.next is not None:
                        side.next.prev = b
        self._cache(b)

    def empty_cache(self) -> None:
        for pool in self.pools.values():
            whole = [e for e in pool if e[2].prev is None and e[2].next is None]
            for e in whole:
                pool.remove(e)
                self.reserved -= self.segments.pop(e[2].segment)


@dataclasses.dataclass
class Replayed:
    reserved: list[int]  # memory_reserved() after each step
    retries: list[int]   # each step's returns of the cache at the capacity


def replay(events: list[tuple[int, int]], before_step: int, steps: int = 10, capacity: int | None = None) -> Replayed:
    """memory_reserved() after each of `steps` identical steps, from an empty cache: the allocations
    made before the step (weights, buffers, AdamW's state) once, then the step's, again and again. What
    a step leaves alive (its loss) is dropped as the next one begins; a negative key is held all run.
    On a device of `capacity` bytes it raises OutOfMemory where the allocator would."""
    a = CachingAllocator(capacity)
    live: dict[int, Block] = {}

    def run(part, first: bool) -> None:
        for key, n in part:
            if n < 0:
                b = live.pop(key, None)
                if b is not None:
                    a.free(b)
            elif key >= 0 or first:
                if key in live:
                    a.free(live.pop(key))
                live[key] = a.malloc(n)

    run(events[:before_step], True)
    held = set(live)
    out = Replayed([], [])
    for i in range(steps):
        before = a.retries
        run(events[before_step:], i == 0)
        out.reserved.append(a.reserved)
        out.retries.append(a.retries - before)
        for key in [k for k in live if k not in held and k >= 0]:
            a.free(live.pop(key))
    return out
