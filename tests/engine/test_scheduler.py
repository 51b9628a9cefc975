"""Scheduler policy on CPU with factory helpers: budgets, chunked prefill, preemption, priority."""

from __future__ import annotations

import itertools

import pytest

from engine.block_manager import BlockManager
from engine.sampling_params import SamplingParams
from engine.scheduler import Scheduler, SchedulerConfig
from engine.sequence import Sequence, Status

_ids = itertools.count()


def make_seq(prompt_len: int, max_tokens: int = 4, priority: int = 0, base: int = 100) -> Sequence:
    return Sequence(
        f"r{next(_ids)}",
        list(range(base, base + prompt_len)),
        SamplingParams(max_tokens=max_tokens),
        priority=priority,
    )


def make_scheduler(
    num_blocks: int = 64,
    block_size: int = 4,
    max_seqs: int = 8,
    budget: int = 32,
    prefix_caching: bool = True,
) -> Scheduler:
    return Scheduler(SchedulerConfig(max_seqs, budget), BlockManager(num_blocks, block_size, prefix_caching))


def run_step(s: Scheduler) -> list[tuple[str, int]]:
    """Pretend to execute one step: advance computed tokens, sample token 7, finish at max_tokens."""
    out = s.schedule()
    for seq, n in out.scheduled:
        seq.num_computed += n
        s.blocks.commit(seq.request_id, seq.token_ids, seq.num_computed)
        if seq.num_computed == seq.num_tokens:
            seq.append(7)
            if len(seq.output_token_ids) >= seq.params.max_tokens:
                s.finish(seq)
    return [(seq.request_id, n) for seq, n in out.scheduled]


def test_chunked_prefill_respects_the_token_budget():
    s = make_scheduler(budget=10)
    a = make_seq(25, max_tokens=2)
    s.add(a)
    assert run_step(s) == [(a.request_id, 10)]
    assert run_step(s) == [(a.request_id, 10)]
    assert run_step(s) == [(a.request_id, 5)]  # prompt done: first token sampled
    assert a.output_token_ids == [7]
    assert run_step(s) == [(a.request_id, 1)]
    assert a.status is Status.FINISHED and s.blocks.num_free_blocks() == s.blocks.num_blocks


def test_decode_and_prefill_share_a_step():
    s = make_scheduler(budget=8)
    a, b = make_seq(4, max_tokens=10), make_seq(20, max_tokens=2)
    s.add(a)
    run_step(s)  # a prefilled
    s.add(b)
    assert run_step(s) == [(a.request_id, 1), (b.request_id, 7)]  # decode first, then a prefill chunk
    assert run_step(s) == [(a.request_id, 1), (b.request_id, 7)]


def test_max_num_seqs_limits_admission():
    s = make_scheduler(max_seqs=2, budget=100)
    seqs = [make_seq(3) for _ in range(3)]
    for q in seqs:
        s.add(q)
    assert [rid for rid, _ in run_step(s)] == [seqs[0].request_id, seqs[1].request_id]
    assert s.num_waiting == 1


def test_priority_orders_admission_and_fcfs_within_a_priority():
    s = make_scheduler(max_seqs=2, budget=100)
    low, high1, high2 = make_seq(3, priority=5), make_seq(3, priority=0), make_seq(3, priority=0)
    for q in (low, high1, high2):
        s.add(q)
    assert [rid for rid, _ in run_step(s)] == [high1.request_id, high2.request_id]


def test_preemption_by_recompute_when_blocks_run_out():
    s = make_scheduler(num_blocks=4, block_size=4, budget=100, prefix_caching=False)
    a, b = make_seq(7, max_tokens=8), make_seq(7, max_tokens=8)  # each needs 2 blocks now, 4 later
    s.add(a)
    s.add(b)
    run_step(s)
    assert a.status is b.status is Status.RUNNING and s.blocks.num_free_blocks() == 0
    run_step(s)  # both decode position 7: still inside their second block
    assert s.num_preemptions == 0
    run_step(s)  # both decode position 8: each needs a third block -> b (latest) is preempted
    assert b.status is Status.WAITING and b.num_computed == 0 and b.num_preemptions == 1
    assert s.num_preemptions == 1
    while a.status is not Status.FINISHED:
        run_step(s)
    tokens_before = list(b.token_ids)
    while b.status is not Status.FINISHED:
        run_step(s)
    assert b.token_ids[: len(tokens_before)] == tokens_before  # recompute keeps what was generated
    assert len(b.output_token_ids) == 8
    assert s.blocks.num_free_blocks() == s.blocks.num_blocks


def test_lower_priority_is_the_preemption_victim():
    s = make_scheduler(num_blocks=4, block_size=4, budget=100, prefix_caching=False)
    important, other = make_seq(7, max_tokens=8, priority=0), make_seq(7, max_tokens=8, priority=3)
    s.add(other)
    run_step(s)
    s.add(important)
    for _ in range(3):
        run_step(s)
    assert important.status is Status.RUNNING and other.status is Status.WAITING


def test_finish_and_abort_free_blocks_immediately():
    s = make_scheduler()
    a, b = make_seq(9), make_seq(9)
    s.add(a)
    s.add(b)
    run_step(s)
    used = s.blocks.num_blocks - s.blocks.num_free_blocks()
    assert used == 6
    s.finish(a)
    assert s.blocks.num_blocks - s.blocks.num_free_blocks() == 3
    c = make_seq(5)
    s.add(c)
    s.finish(c)  # abort while waiting
    assert s.num_waiting == 0 and c.status is Status.FINISHED


def test_prefix_cache_hit_skips_computed_prompt_tokens():
    s = make_scheduler(block_size=4, budget=100)
    a = make_seq(13, max_tokens=1)
    s.add(a)
    run_step(s)  # a: 13 tokens computed, 3 full blocks committed; finished after 1 token
    b = make_seq(13, max_tokens=1)  # same prompt
    s.add(b)
    assert run_step(s) == [(b.request_id, 1)]  # 12 tokens reused, only the last one recomputed


@pytest.mark.parametrize("bad", [dict(max_num_seqs=0), dict(max_num_batched_tokens=0)])
def test_bad_config(bad):
    with pytest.raises(ValueError):
        SchedulerConfig(**bad)


def test_background_prefill_waits_while_a_better_priority_prompt_is_computed():
    s = make_scheduler(budget=64)
    batch = [make_seq(20, max_tokens=5, priority=100, base=200 + 30 * i) for i in range(2)]
    for q in batch:
        s.add(q)
    run_step(s)  # both background prompts computed: they decode from now on
    later = make_seq(40, max_tokens=5, priority=100, base=500)
    urgent = make_seq(30, max_tokens=5, priority=0, base=700)
    s.add(later)
    s.add(urgent)
    out = s.schedule()
    # the urgent prompt runs alone: the background prompt waits, the background decodes sit out
    assert {seq.request_id: n for seq, n in out.scheduled} == {urgent.request_id: 30}
    assert out.held == 2
    for seq, n in out.scheduled:
        seq.num_computed += n
        seq.append(7)
    step = dict(run_step(s))  # then everyone gets their turn, the held decodes lost nothing
    assert step == {
        batch[0].request_id: 1,
        batch[1].request_id: 1,
        later.request_id: 40,
        urgent.request_id: 1,
    }


def test_a_prompt_that_cannot_be_admitted_holds_no_decode_back():
    s = make_scheduler(budget=64, max_seqs=2)
    batch = [make_seq(8, max_tokens=5, priority=100, base=200 + 30 * i) for i in range(2)]
    for q in batch:
        s.add(q)
    run_step(s)
    urgent = make_seq(10, max_tokens=5, priority=0, base=700)
    s.add(urgent)  # no free slot (max_num_seqs 2): it waits, the background keeps decoding
    out = s.schedule()
    assert {seq.request_id: n for seq, n in out.scheduled} == {q.request_id: 1 for q in batch}
    assert out.held == 0


def test_equal_priorities_keep_sharing_prefill_steps():
    s = make_scheduler(budget=64)
    a, b = make_seq(20), make_seq(20, base=400)
    s.add(a)
    s.add(b)
    assert dict(run_step(s)) == {a.request_id: 20, b.request_id: 20}


def test_background_prompts_share_a_per_step_token_cap_and_foreground_ones_do_not():
    s = Scheduler(SchedulerConfig(8, 512, background_priority=100, background_prefill_tokens=50),
                  BlockManager(128, 4, True))  # fmt: skip
    batch = [make_seq(40, priority=100, base=1000 + 50 * i) for i in range(3)]
    for q in batch:
        s.add(q)
    assert dict(run_step(s)) == {batch[0].request_id: 40, batch[1].request_id: 10}  # 50 in all
    assert dict(run_step(s)) == {batch[0].request_id: 1, batch[1].request_id: 30, batch[2].request_id: 20}
    fg = make_seq(300, priority=0, base=3000)
    s.add(fg)
    step = dict(run_step(s))
    assert step == {fg.request_id: 300}  # a foreground prompt is not capped (background decodes held)
    step = dict(run_step(s))
    assert step[batch[2].request_id] == 20 and step[fg.request_id] == 1


def test_background_prefill_tokens_must_be_positive():
    with pytest.raises(ValueError, match="background_prefill_tokens"):
        SchedulerConfig(background_prefill_tokens=0)
