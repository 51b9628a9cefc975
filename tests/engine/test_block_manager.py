"""BlockManager: block tables, all-or-nothing growth, exact prefix sharing, LRU eviction, invariants."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from engine import block_manager as bm_mod
from engine.block_manager import BlockManager

BS = 4  # block size of every test pool


def make_bm(num_blocks: int = 16, caching: bool = True) -> BlockManager:
    return BlockManager(num_blocks, BS, enable_prefix_caching=caching)


def toks(n: int, start: int = 0) -> list[int]:
    return list(range(start, start + n))


def prefill(bm: BlockManager, req_id: str, tokens: list[int]) -> int:
    """Admit, allocate every slot and commit the whole prompt, as the scheduler does; returns hits."""
    hit = bm.allocate(req_id, tokens)
    assert bm.ensure_slots(req_id, len(tokens))
    bm.commit(req_id, tokens, len(tokens))
    bm.check_invariants()
    return hit


def free_all(bm: BlockManager, *req_ids: str) -> None:
    for req_id in req_ids:
        bm.free(req_id)
    bm.check_invariants()


# --------------------------------------------------------------------------- basics


def test_invalid_arguments_raise():
    with pytest.raises(ValueError, match="num_blocks"):
        BlockManager(0, BS)
    with pytest.raises(ValueError, match="block_size"):
        BlockManager(4, 0)
    bm = make_bm()
    with pytest.raises(ValueError, match="unknown request"):
        bm.ensure_slots("nope", 4)
    with pytest.raises(ValueError, match="empty"):
        bm.allocate("a", [])
    bm.allocate("a", toks(5))
    with pytest.raises(ValueError, match="num_tokens"):
        bm.ensure_slots("a", -1)
    assert bm.ensure_slots("a", 5)
    with pytest.raises(ValueError, match="already holds blocks"):
        bm.allocate("a", toks(5))
    with pytest.raises(ValueError, match="num_computed"):
        bm.commit("a", toks(5), 6)
    with pytest.raises(ValueError, match="allocated slots"):
        bm.commit("a", toks(12), 9)
    bm.check_invariants()


def test_allocate_grow_free():
    bm = make_bm(num_blocks=8)
    assert bm.allocate("a", toks(5)) == 0
    assert bm.block_table("a") == [] and bm.num_slots("a") == 0
    assert bm.ensure_slots("a", 5)
    assert len(bm.block_table("a")) == 2 and bm.num_slots("a") == 8
    assert bm.ensure_slots("a", 8) and len(bm.block_table("a")) == 2  # already covered
    assert bm.blocks_needed("a", 9) == 1
    assert bm.ensure_slots("a", 9) and len(bm.block_table("a")) == 3
    assert len(set(bm.block_table("a"))) == 3
    assert bm.num_free_blocks() == 5 and bm.usage() == 3 / 8
    s = bm.stats()
    assert (s.used, s.free, s.shared) == (3, 5, 0)
    free_all(bm, "a", "a", "never-seen")  # idempotent, unknown ids are fine
    assert bm.num_free_blocks() == 8 and bm.usage() == 0.0
    assert bm.block_table("a") == [] and bm.num_slots("a") == 0


def test_ensure_slots_is_all_or_nothing():
    bm = make_bm(num_blocks=4)
    bm.allocate("a", toks(12))
    assert bm.ensure_slots("a", 12)
    bm.allocate("b", toks(8, 100))
    assert not bm.ensure_slots("b", 8)  # needs 2, only 1 left
    assert bm.block_table("b") == [] and bm.num_free_blocks() == 1
    assert bm.ensure_slots("b", 4)
    assert not bm.ensure_slots("b", 5)
    assert len(bm.block_table("b")) == 1 and bm.num_free_blocks() == 0
    bm.check_invariants()
    free_all(bm, "a", "b")
    assert bm.num_free_blocks() == 4


# --------------------------------------------------------------------------- prefix sharing


def test_second_request_shares_committed_prefix_blocks():
    bm = make_bm()
    a = toks(14)
    assert prefill(bm, "a", a) == 0
    b = a[:12] + toks(5, 500)
    assert bm.allocate("b", b) == 12
    assert bm.block_table("b") == bm.block_table("a")[:3]
    assert all(bm.ref_count(blk) == 2 for blk in bm.block_table("b"))
    assert bm.ensure_slots("b", len(b))
    assert not set(bm.block_table("b")[3:]) & set(bm.block_table("a"))
    s = bm.stats()
    assert (s.shared, s.cached, s.prefix_hits, s.prefix_queries) == (3, 3, 12, 14 + 17)
    assert s.hit_rate == 12 / 31
    bm.check_invariants()
    free_all(bm, "a", "b")
    assert bm.num_free_blocks() == bm.num_blocks


def test_fully_cached_prompt_still_computes_its_last_block():
    bm = make_bm()
    prefill(bm, "a", toks(12))  # exactly 3 full blocks, all registered
    assert bm.stats().cached == 3
    assert bm.allocate("b", toks(12)) == 8  # the last block is recomputed, not reused
    assert bm.block_table("b") == bm.block_table("a")[:2]
    assert bm.allocate("c", toks(13)) == 12
    assert bm.block_table("c") == bm.block_table("a")
    free_all(bm, "a", "b", "c")


def test_freed_blocks_stay_cached_and_are_reused():
    bm = make_bm(num_blocks=8)
    prefill(bm, "a", toks(13))
    a_blocks = bm.block_table("a")
    free_all(bm, "a")
    assert bm.num_free_blocks() == 8 and bm.stats().cached == 3
    assert bm.allocate("c", [*toks(12), 99]) == 12
    assert bm.block_table("c") == a_blocks[:3]
    assert bm.num_free_blocks() == 5  # evictable blocks became referenced again
    bm.check_invariants()
    free_all(bm, "c")


def test_lru_cached_blocks_are_evicted_and_no_longer_hit():
    bm = make_bm(num_blocks=4)
    prefill(bm, "a", toks(9))  # blocks a0, a1 registered, a2 partial
    a0 = bm.block_table("a")[0]
    free_all(bm, "a")  # tail released first: a1 is older in the LRU than a0
    bm.allocate("b", toks(16, 100))
    assert bm.ensure_slots("b", 12)  # the 2 truly free blocks, then evicts a1
    assert set(bm.block_table("b")) == {0, 1, 2, 3} - {a0}
    assert bm.stats().cached == 1
    assert bm.allocate("c", toks(9)) == 4  # a0 still hits, a1's content is gone
    assert bm.block_table("c") == [a0]
    free_all(bm, "c")
    assert bm.ensure_slots("b", 16)  # evicts a0 too
    assert bm.stats().cached == 0
    assert bm.allocate("d", toks(9)) == 0
    free_all(bm, "b", "d")
    assert bm.num_free_blocks() == 4


def test_partial_blocks_are_never_shared():
    bm = make_bm()
    a = toks(10)
    bm.allocate("a", a)
    assert bm.ensure_slots("a", 10)
    bm.commit("a", a, 6)
    assert bm.stats().cached == 1  # only block 0 is entirely below 6
    bm.commit("a", a, 10)
    assert bm.stats().cached == 2  # block 2 holds 2 of 4 tokens: not registered
    assert bm.allocate("b", [*a, 7, 7, 7]) == 8
    assert bm.block_table("b") == bm.block_table("a")[:2]
    free_all(bm, "a", "b")


def test_prefix_caching_disabled_never_shares():
    bm = make_bm(num_blocks=8, caching=False)
    prefill(bm, "a", toks(13))
    assert bm.allocate("b", toks(13)) == 0 and bm.block_table("b") == []
    assert bm.ensure_slots("b", 13)
    assert not set(bm.block_table("a")) & set(bm.block_table("b"))
    s = bm.stats()
    assert (s.cached, s.shared, s.prefix_queries, s.prefix_hits) == (0, 0, 0, 0)
    free_all(bm, "a", "b")
    assert bm.num_free_blocks() == 8


def test_generated_tokens_become_shareable():
    bm = make_bm()
    prompt, generated = toks(6), [50, 51, 52]
    prefill(bm, "a", prompt)
    tokens = prompt + generated
    assert bm.ensure_slots("a", len(tokens))
    bm.commit("a", tokens, len(tokens))  # block 1 (positions 4..7) is now full
    assert bm.stats().cached == 2
    assert bm.allocate("b", tokens) == 8
    free_all(bm, "a", "b")


def test_duplicate_content_keeps_first_entry_and_chain_continues():
    bm = make_bm()
    a, b = toks(9), toks(8) + toks(5, 300)
    bm.allocate("a", a)
    bm.allocate("b", b)  # admitted before a committed: no hit, computes the same 2 blocks
    assert bm.ensure_slots("a", 9) and bm.ensure_slots("b", 13)
    bm.commit("a", a, 9)
    bm.commit("b", b, 13)
    assert bm.stats().cached == 3  # a's 2 blocks + b's own block 2; b's copies are not registered
    assert bm.allocate("c", [*b, 1]) == 12
    assert bm.block_table("c") == [*bm.block_table("a")[:2], bm.block_table("b")[2]]
    free_all(bm, "a", "b", "c")
    assert bm.num_free_blocks() == bm.num_blocks


def test_reset_prefix_cache():
    bm = make_bm(num_blocks=8)
    prefill(bm, "a", toks(9))
    prefill(bm, "b", toks(9, 100))
    free_all(bm, "a")
    assert not bm.reset_prefix_cache()  # b still holds registered blocks
    assert bm.stats().cached == 2 and bm.allocate("c", toks(9)) == 0
    free_all(bm, "b", "c")
    assert bm.reset_prefix_cache()
    assert bm.stats().cached == 0 and bm.num_free_blocks() == 8
    assert bm.allocate("d", toks(9, 100)) == 0
    bm.check_invariants()


# --------------------------------------------------------------------------- exact hits


def test_hash_collision_never_shares_other_content(monkeypatch):
    monkeypatch.setattr(bm_mod, "hash_block", lambda parent, tokens: 0)
    bm = make_bm()
    prefill(bm, "a", toks(9))
    assert bm.stats().cached == 1  # block 1 collides with block 0: chain stops there
    assert bm.allocate("b", toks(9, 100)) == 0 and bm.block_table("b") == []
    assert bm.allocate("c", toks(9)) == 4  # block 0 is an exact hit, block 1 is not registered
    free_all(bm, "a", "b", "c")


def test_collision_in_parent_does_not_leak_to_child(monkeypatch):
    def first_blocks_collide(parent: int | None, tokens: tuple[int, ...]) -> int:
        return 7 if parent is None else hash((parent, tokens))

    monkeypatch.setattr(bm_mod, "hash_block", first_blocks_collide)
    bm = make_bm()
    t0, t0_other, t1 = toks(4), toks(4, 100), toks(4, 200)
    prefill(bm, "c", [*t0, 1])  # registers t0 under hash 7
    prefill(bm, "a", [*t0_other, *t1, 1])  # t0_other collides: a's t1 block must not be registered
    assert bm.stats().cached == 1
    assert bm.allocate("b", [*t0, *t1, 1]) == 4  # t0 hits; t1 after t0_other is NOT t1 after t0
    assert bm.block_table("b") == bm.block_table("c")[:1]
    free_all(bm, "a", "b", "c")


def test_stale_child_of_evicted_parent_is_not_shared(monkeypatch):
    """A registered child outlives its parent's registration; new colliding content must not adopt it."""
    monkeypatch.setattr(bm_mod, "hash_block", lambda p, t: 7 if p is None else hash((p, t)))
    bm = make_bm()
    t0, t0_other, t1, t2 = toks(4), toks(4, 100), toks(4, 200), toks(4, 300)
    a, b = [*t0, *t1, 1], [*t0, *t1, *t2, 1]
    for req_id, tokens in (("a", a), ("b", b)):  # both admitted before either commits
        bm.allocate(req_id, tokens)
        assert bm.ensure_slots(req_id, len(tokens))
    bm.commit("a", a, len(a))
    bm.commit("b", b, len(b))  # b's t2 block is registered as the child of a's t1 block
    free_all(bm, "a")
    assert not bm.reset_prefix_cache()  # drops a's blocks; b's t2 block stays registered
    prefill(bm, "d", [*t0_other, *t1, 1])  # t0_other now owns hash 7, its t1 block the same chain hash
    assert bm.allocate("e", [*t0_other, *t1, *t2, 1]) == 8  # not b's t2 block: its prefix is t0, t1
    assert bm.block_table("e") == bm.block_table("d")[:2]
    free_all(bm, "b", "d", "e")


# --------------------------------------------------------------------------- random programs

PREFIXES = [[], toks(4, 1000), toks(9, 2000), toks(12, 3000)]
INDEX = st.integers(0, 99)  # which live request / past prompt, modulo how many there are
RARELY = st.integers(0, 5).map(lambda k: k == 0)


class BlockManagerMachine(RuleBasedStateMachine):
    """Random admit / grow+commit / abort / finish programs against a small pool.

    A shadow KV store records, for each slot written, the tokens its KV depends on (the prefix up to
    and including it), so every prefix hit is checked exactly and writes into shared blocks are caught.
    """

    def __init__(self) -> None:
        super().__init__()
        self.bm = BlockManager(num_blocks=12, block_size=BS)
        # block id -> what each slot's KV depends on: the tokens up to and including its position
        self.kv: dict[int, list[tuple[int, ...] | None]] = {}
        self.tokens: dict[str, list[int]] = {}  # live request -> prompt + generated tokens
        self.computed: dict[str, int] = {}
        self.history: list[list[int]] = []  # token lists of past requests, to replay as prompts
        self.next_id = 0

    def _pick(self, index: int) -> str:
        return sorted(self.tokens)[index % len(self.tokens)]

    @rule(prefix=st.sampled_from(PREFIXES), suffix=st.lists(st.integers(0, 1), min_size=1, max_size=9))
    def add(self, prefix: list[int], suffix: list[int]) -> None:
        self._admit(prefix + suffix)

    @precondition(lambda self: self.history)
    @rule(index=INDEX, cut=st.integers(1, 40), extra=st.lists(st.integers(0, 1), max_size=5))
    def add_replay(self, index: int, cut: int, extra: list[int]) -> None:
        """A past request's tokens (cut, maybe extended) as a new prompt: a multi-turn chat or a retry."""
        self._admit(self.history[index % len(self.history)][:cut] + extra)

    def _admit(self, tokens: list[int]) -> None:
        req_id = f"r{self.next_id}"
        self.next_id += 1
        hit = self.bm.allocate(req_id, tokens)
        assert hit % BS == 0 and hit <= ((len(tokens) - 1) // BS) * BS
        table = self.bm.block_table(req_id)
        assert len(table) * BS == hit
        for i, blk in enumerate(table):  # the shared KV really holds this request's tokens
            assert self.kv[blk] == [tuple(tokens[: p + 1]) for p in range(i * BS, (i + 1) * BS)]
        self.tokens[req_id], self.computed[req_id] = tokens, hit

    @precondition(lambda self: self.tokens)
    @rule(index=INDEX, n=st.integers(1, 10), new_token=st.integers(0, 1), abort=RARELY)
    def grow_and_commit(self, index: int, n: int, new_token: int, abort: bool) -> None:
        """Compute n more tokens (generating past the prompt); `abort` frees it before the commit."""
        req_id = self._pick(index)
        tokens, done = self.tokens[req_id], self.computed[req_id]
        while len(tokens) < done + n:  # decode past the prompt: generate tokens
            tokens.append(new_token)
        free_before, table_before = self.bm.num_free_blocks(), self.bm.block_table(req_id)
        if not self.bm.ensure_slots(req_id, done + n):
            assert self.bm.num_free_blocks() == free_before
            assert self.bm.block_table(req_id) == table_before
            return
        table = self.bm.block_table(req_id)
        for pos in range(done, done + n):
            blk = table[pos // BS]
            assert self.bm.ref_count(blk) == 1, "writing into a shared block"
            self.kv.setdefault(blk, [None] * BS)[pos % BS] = tuple(tokens[: pos + 1])
        if abort:
            self.finish_or_abort(index)
            return
        self.bm.commit(req_id, tokens, done + n)
        self.computed[req_id] = done + n

    @precondition(lambda self: self.tokens)
    @rule(index=INDEX)
    def fork(self, index: int) -> None:
        """Another sample of a request: shares its computed KV, copies its partial block (n > 1)."""
        parent = self._pick(index)
        child = f"r{self.next_id}"
        self.next_id += 1
        done = self.computed[parent]
        if not done:  # the engine forks only once the prompt is computed
            return
        copies = self.bm.fork(parent, child, done)
        if copies is None:
            assert done % BS and self.bm.num_free_blocks() == 0
            return
        for src, dst in copies:  # what the engine's KV copy does
            self.kv[dst] = list(self.kv[src])
        assert len(self.bm.block_table(child)) * BS >= done
        self.tokens[child], self.computed[child] = list(self.tokens[parent][:done]), done

    @precondition(lambda self: self.tokens)
    @rule(index=INDEX)
    def finish_or_abort(self, index: int) -> None:
        req_id = self._pick(index)
        self.bm.free(req_id)
        self.history = [*self.history[-7:], self.tokens.pop(req_id)]
        del self.computed[req_id]

    @invariant()
    def pool_is_consistent(self) -> None:
        self.bm.check_invariants()
        s = self.bm.stats()
        assert s.free + s.used == s.num_blocks and s.used == round(self.bm.usage() * s.num_blocks)

    def teardown(self) -> None:
        for req_id in list(self.tokens):
            self.bm.free(req_id)
        self.bm.check_invariants()
        assert self.bm.num_free_blocks() == self.bm.num_blocks and self.bm.usage() == 0.0
        assert self.bm.stats().shared == 0
        assert self.bm.reset_prefix_cache() and self.bm.stats().cached == 0


class WeakHashMachine(BlockManagerMachine):
    """The same programs with a weak hash that ignores the parent: equal blocks after different
    prefixes collide, and so do different blocks; hits must stay exact."""

    def __init__(self) -> None:
        super().__init__()
        self._real_hash = bm_mod.hash_block
        bm_mod.hash_block = lambda parent, tokens: hash(tokens) % 16

    def teardown(self) -> None:
        try:
            super().teardown()
        finally:
            bm_mod.hash_block = self._real_hash


_MACHINE_SETTINGS = settings(
    max_examples=200, stateful_step_count=30, derandomize=True, deadline=None, database=None
)
TestBlockManagerMachine = BlockManagerMachine.TestCase
TestBlockManagerMachine.settings = _MACHINE_SETTINGS
TestWeakHashMachine = WeakHashMachine.TestCase
TestWeakHashMachine.settings = settings(_MACHINE_SETTINGS, max_examples=100)


# --------------------------------------------------------------------------- fork (n samples)


@pytest.mark.parametrize("caching", [True, False])
def test_fork_shares_full_blocks_and_copies_the_partial_one(caching):
    bm = make_bm(8, caching)
    prompt = toks(10)  # 2 full blocks + 2 tokens
    bm.allocate("a", prompt)
    assert bm.ensure_slots("a", 10)
    bm.commit("a", prompt, 10)
    copies = bm.fork("a", "a#1", 10)
    parent, child = bm.block_table("a"), bm.block_table("a#1")
    assert child[:2] == parent[:2] and child[2] != parent[2]
    assert copies == [(parent[2], child[2])]
    assert all(bm.ref_count(b) == 2 for b in parent[:2]) and bm.stats().shared == 2
    bm.check_invariants()
    # the child's chain continues from the shared blocks: its own full third block is cached
    child_tokens = [*prompt, 100, 101]
    assert bm.ensure_slots("a#1", 12)
    bm.commit("a#1", child_tokens, 12)
    assert prefill(bm, "b", [*child_tokens, 5]) == (12 if caching else 0)
    free_all(bm, "a", "a#1", "b")
    assert bm.num_free_blocks() == 8


def test_fork_at_a_block_boundary_copies_nothing():
    bm = make_bm(4)
    prefill(bm, "a", toks(8))
    assert bm.fork("a", "a#1", 8) == []
    assert bm.block_table("a#1") == bm.block_table("a")
    bm.check_invariants()


def test_fork_without_a_free_block_changes_nothing():
    bm = make_bm(3)
    prefill(bm, "a", toks(10))  # all 3 blocks
    assert bm.fork("a", "a#1", 10) is None
    assert bm.block_table("a#1") == [] and bm.stats().shared == 0
    bm.check_invariants()
    with pytest.raises(ValueError, match="fewer than"):
        bm.fork("a", "a#2", 13)
