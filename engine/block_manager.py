"""Block pool of the paged KV cache: per-request block tables, refcounts, and prefix caching.

Flow: `allocate` admits a request and shares the cached full blocks of its prompt prefix (`fork`
gives another sample of a request the same blocks, copying only a partial last block) ->
`ensure_slots` grows its table from the free list (then by evicting LRU cached blocks) -> `commit`
registers the hash of every block that became full -> `free` drops its references; registered blocks
with no reference stay cached (evictable, LRU) until their slot is needed. Pure Python, no torch.

Every block is in exactly one state: referenced (refcount > 0, in >= 1 block table), evictable
(refcount 0, registered, in `_evictable`) or truly free (refcount 0, unregistered, in `_free`).
Cache hits are exact: an entry matches only if its tokens are equal and its parent is the very
registration the lookup matched one level up (registrations carry never-reused serial numbers).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field

_ROOT = 0  # parent serial of a request's first block; real registrations are numbered from 1


def hash_block(parent_hash: int | None, tokens: tuple[int, ...]) -> int:
    """Chain hash of a full block: the parent block's hash (None for block 0) with this block's tokens."""
    return hash((parent_hash, tokens))


@dataclass(frozen=True)
class BlockStats:
    num_blocks: int
    free: int  # refcount 0: truly free + cached-but-evictable
    used: int  # refcount > 0
    cached: int  # registered (hash known), referenced or evictable
    shared: int  # refcount > 1
    prefix_queries: int  # prompt tokens looked up in the prefix cache
    prefix_hits: int  # of those, tokens whose KV was reused

    @property
    def hit_rate(self) -> float:
        return self.prefix_hits / self.prefix_queries if self.prefix_queries else 0.0


@dataclass(slots=True)
class _Block:
    ref: int = 0
    hash: int | None = None  # set while registered
    serial: int = 0  # identity of the current registration (0 = unregistered)
    parent_serial: int = 0  # registration this block's content follows (_ROOT for block 0)
    tokens: tuple[int, ...] = ()


@dataclass(slots=True)
class _Request:
    table: list[int] = field(default_factory=list)
    hashes: list[int] = field(default_factory=list)  # chain hash of table[i] for i < len(hashes)
    # Serial of a registration holding exactly table[i]'s content chain; None once the chain is
    # broken by a hash collision (later blocks of this request are then never registered).
    idents: list[int | None] = field(default_factory=list)


class BlockManager:
    """Owns which request holds which KV block; see the module docstring for the block states."""

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        if num_blocks <= 0:
            raise ValueError(f"num_blocks must be > 0, got {num_blocks}")
        if block_size <= 0:
            raise ValueError(f"block_size must be > 0, got {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self._blocks = [_Block() for _ in range(num_blocks)]
        self._free: deque[int] = deque(range(num_blocks))
        self._evictable: OrderedDict[int, None] = OrderedDict()  # oldest release first
        self._cached: dict[int, int] = {}  # chain hash -> registered block id
        self._requests: dict[str, _Request] = {}
        self._next_serial = _ROOT + 1
        self._num_shared = 0
        self._prefix_queries = 0
        self._prefix_hits = 0

    # ----------------------------------------------------------------------------- queries

    def num_free_blocks(self) -> int:
        return len(self._free) + len(self._evictable)

    def usage(self) -> float:
        return (self.num_blocks - self.num_free_blocks()) / self.num_blocks

    def block_table(self, req_id: str) -> list[int]:
        req = self._requests.get(req_id)
        return list(req.table) if req else []

    def num_slots(self, req_id: str) -> int:
        return len(self.block_table(req_id)) * self.block_size

    def ref_count(self, block_id: int) -> int:
        return self._blocks[block_id].ref

    def blocks_needed(self, req_id: str, num_tokens: int) -> int:
        """How many new blocks `ensure_slots(req_id, num_tokens)` would take (0 if already covered)."""
        if num_tokens < 0:
            raise ValueError(f"num_tokens must be >= 0, got {num_tokens}")
        req = self._requests.get(req_id)
        have = len(req.table) if req else 0
        return max(0, -(-num_tokens // self.block_size) - have)

    def stats(self) -> BlockStats:
        free = self.num_free_blocks()
        return BlockStats(
            num_blocks=self.num_blocks,
            free=free,
            used=self.num_blocks - free,
            cached=len(self._cached),
            shared=self._num_shared,
            prefix_queries=self._prefix_queries,
            prefix_hits=self._prefix_hits,
        )

    # ----------------------------------------------------------------------------- lifecycle

    def allocate(self, req_id: str, token_ids: Sequence[int], compute_from: int | None = None) -> int:
        """Admit req_id, sharing the cached full blocks of its prefix; returns tokens already computed.

        Only full blocks lying before position `compute_from` are reused: at most compute_from //
        block_size of them, so that position and every later one are computed by the engine. The
        default, len - 1, always leaves the last token (whose logits are sampled) to compute; a
        prefill-only request passes its first hidden position. If the following `ensure_slots`
        fails, call `free(req_id)` to give the shared blocks back.
        """
        if not token_ids:
            raise ValueError(f"request {req_id!r}: token_ids must not be empty")
        last = len(token_ids) - 1
        compute_from = last if compute_from is None else compute_from
        if not 0 <= compute_from <= last:
            raise ValueError(f"request {req_id!r}: compute_from={compute_from} must be in [0, {last}]")
        old = self._requests.get(req_id)
        if old is not None and old.table:
            raise ValueError(f"request {req_id!r} already holds blocks; free it before allocating again")
        req = self._requests[req_id] = _Request()
        if not self.enable_prefix_caching:
            return 0
        bs = self.block_size
        parent_hash, parent_serial = None, _ROOT
        for i in range(compute_from // bs):
            tokens = tuple(token_ids[i * bs : (i + 1) * bs])
            h = hash_block(parent_hash, tokens)
            block_id = self._lookup(h, parent_serial, tokens)
            if block_id is None:
                break
            self._take_ref(block_id)
            req.table.append(block_id)
            req.hashes.append(h)
            req.idents.append(self._blocks[block_id].serial)
            parent_hash, parent_serial = h, self._blocks[block_id].serial
        computed = len(req.table) * bs
        self._prefix_queries += len(token_ids)
        self._prefix_hits += computed
        return computed

    def ensure_slots(self, req_id: str, num_tokens: int) -> bool:
        """Grow req_id's table to cover positions [0, num_tokens); all or nothing (False = unchanged)."""
        req = self._get(req_id)
        need = self.blocks_needed(req_id, num_tokens)
        if need > self.num_free_blocks():
            return False
        for _ in range(need):
            req.table.append(self._take_free())
        return True

    def fork(self, parent_id: str, child_id: str, num_tokens: int) -> list[tuple[int, int]] | None:
        """Give child_id the KV of parent_id's first num_tokens tokens; returns the block copies to make.

        Full blocks are shared (refcount), so the prompt's KV exists once whatever n is; a partial
        last block is the child's own (it will write there), so it gets a fresh block and the caller
        copies the parent's KV into it: the returned [(src, dst)]. None (nothing changed) when no
        block is free for that copy.
        """
        parent = self._get(parent_id)
        if self._requests.get(child_id) is not None:
            raise ValueError(f"request {child_id!r} already holds blocks; free it before forking into it")
        if num_tokens > len(parent.table) * self.block_size:
            raise ValueError(f"request {parent_id!r} holds fewer than {num_tokens} slots")
        full, partial = divmod(num_tokens, self.block_size)
        if partial and not self.num_free_blocks():
            return None
        child = self._requests[child_id] = _Request(
            table=list(parent.table[:full]), hashes=parent.hashes[:full], idents=parent.idents[:full]
        )
        for block_id in child.table:
            self._take_ref(block_id)
        if not partial:
            return []
        dst = self._take_free()
        child.table.append(dst)
        return [(parent.table[full], dst)]

    def commit(self, req_id: str, token_ids: Sequence[int], num_computed: int) -> None:
        """KV of token_ids[:num_computed] is written: register every block of req_id that is now full."""
        if not 0 <= num_computed <= len(token_ids):
            raise ValueError(
                f"request {req_id!r}: num_computed={num_computed} must be in "
                f"[0, len(token_ids)={len(token_ids)}]"
            )
        req = self._get(req_id)
        if num_computed > len(req.table) * self.block_size:
            raise ValueError(
                f"request {req_id!r}: num_computed={num_computed} exceeds its "
                f"{len(req.table) * self.block_size} allocated slots"
            )
        if not self.enable_prefix_caching:
            return
        bs = self.block_size
        for i in range(len(req.hashes), num_computed // bs):
            if req.idents and req.idents[-1] is None:
                return  # chain broken by a collision: nothing after it can be matched exactly
            parent_hash = req.hashes[-1] if req.hashes else None
            parent_serial = req.idents[-1] if req.idents else _ROOT
            tokens = tuple(token_ids[i * bs : (i + 1) * bs])
            h = hash_block(parent_hash, tokens)
            req.hashes.append(h)
            req.idents.append(self._register(req.table[i], h, parent_serial, tokens))

    def free(self, req_id: str) -> None:
        """Release req_id's blocks (idempotent). The tail is released first, so it is evicted first."""
        req = self._requests.pop(req_id, None)
        if req is None:
            return
        for block_id in reversed(req.table):
            block = self._blocks[block_id]
            block.ref -= 1
            if block.ref == 1:
                self._num_shared -= 1
            elif block.ref == 0:
                if block.hash is not None:
                    self._evictable[block_id] = None
                else:
                    self._free.append(block_id)

    def reset_prefix_cache(self) -> bool:
        """Drop the hashes of all unreferenced cached blocks; True if no registered block remains."""
        while self._evictable:
            block_id, _ = self._evictable.popitem(last=False)
            self._unregister(block_id)
            self._free.append(block_id)
        return not self._cached

    # ----------------------------------------------------------------------------- internals

    def _get(self, req_id: str) -> _Request:
        req = self._requests.get(req_id)
        if req is None:
            raise ValueError(f"unknown request {req_id!r}: call allocate() first")
        return req

    def _lookup(self, h: int, parent_serial: int, tokens: tuple[int, ...]) -> int | None:
        """Block registered under h with exactly this content and parent registration, else None."""
        block_id = self._cached.get(h)
        if block_id is None:
            return None
        block = self._blocks[block_id]
        if block.tokens != tokens or block.parent_serial != parent_serial:
            return None  # hash collision: never share different content
        return block_id

    def _take_free(self) -> int:
        """A block with no reference (truly free first, else the LRU cached one), now referenced once."""
        if self._free:
            block_id = self._free.popleft()
        else:
            block_id, _ = self._evictable.popitem(last=False)
            self._unregister(block_id)
        self._blocks[block_id].ref = 1
        return block_id

    def _take_ref(self, block_id: int) -> None:
        block = self._blocks[block_id]
        if block.ref == 0:
            del self._evictable[block_id]
        elif block.ref == 1:
            self._num_shared += 1
        block.ref += 1

    def _register(self, block_id: int, h: int, parent_serial: int, tokens: tuple[int, ...]) -> int | None:
        """Register block_id under h; returns the serial of the registration now holding this content.

        If h is taken by the same content (another block), that entry is kept and its serial returned;
        if it is taken by different content (collision), returns None.
        """
        existing = self._cached.get(h)
        if existing is not None:
            match = self._lookup(h, parent_serial, tokens)
            return self._blocks[match].serial if match is not None else None
        block = self._blocks[block_id]
        block.hash, block.serial = h, self._next_serial
        block.parent_serial, block.tokens = parent_serial, tokens
        self._next_serial += 1
        self._cached[h] = block_id
        return block.serial

    def _unregister(self, block_id: int) -> None:
        block = self._blocks[block_id]
        del self._cached[block.hash]
        block.hash, block.serial, block.parent_serial, block.tokens = None, 0, _ROOT, ()

    # ----------------------------------------------------------------------------- debugging

    def check_invariants(self) -> None:
        """O(num_blocks) consistency check for tests; raises AssertionError naming the broken rule."""
        refs = [0] * self.num_blocks
        for req in self._requests.values():
            for block_id in req.table:
                refs[block_id] += 1
        free, evictable = set(self._free), set(self._evictable)
        _require(len(free) == len(self._free), "a block is twice in the free list")
        for block_id, block in enumerate(self._blocks):
            where = f"block {block_id} (ref={block.ref}, hash={block.hash})"
            _require(block.ref == refs[block_id], f"{where}: held by {refs[block_id]} block tables")
            states = [block.ref > 0, block_id in evictable, block_id in free]
            _require(sum(states) == 1, f"{where}: in {sum(states)} of referenced/evictable/free")
            _require(block_id not in evictable or block.hash is not None, f"{where}: evictable, unregistered")
            _require(block_id not in free or block.hash is None, f"{where}: truly free but registered")
            _require(block.hash is None or self._cached.get(block.hash) == block_id, f"{where}: not cached")
        _require(len(self._cached) == sum(b.hash is not None for b in self._blocks), "stale hash entries")
        _require(self._num_shared == sum(r > 1 for r in refs), "shared-block counter out of sync")


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise AssertionError(message)
