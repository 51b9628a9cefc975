"""The offline API over local ranks: `LLM(path, tensor_parallel_size=2)` starts rank 1 itself, answers
as one rank does, and `close()` ends it; a layout the model cannot split is refused, naming the field,
and leaves no process behind."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from engine import LLM, CheckpointError, SamplingParams


def test_llm_with_two_local_ranks_gives_the_golden_tokens_and_ends_its_follower(golden_dir):
    ref = load_file(golden_dir / "logits.safetensors")
    prompt = ref["gen_prompt_ids"][0].tolist()
    greedy = SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True)
    with LLM(
        golden_dir / "tiny-bailing", dtype=torch.float32, tensor_parallel_size=2, expert_parallel=True
    ) as llm:
        (follower,) = llm.engine.ranks.procs
        assert llm.engine.group.size == 2 and llm.engine.group.expert_parallel
        assert llm.generate([prompt], greedy)[0].token_ids == ref["gen_sequence_ids"][0, 16:].tolist()
        torch.testing.assert_close(
            llm.logits(ref["input_ids_1"][0].tolist()), ref["logits_1"][0], atol=1e-4, rtol=1e-4
        )
    assert follower.returncode == 0  # stopped by rank 0, not killed
    with LLM(
        golden_dir / "tiny-bailing", dtype=torch.float32, tensor_parallel_size=2
    ) as again:  # a new group
        assert again.generate([prompt], greedy)[0].token_ids == ref["gen_sequence_ids"][0, 16:].tolist()


def test_a_layout_the_model_cannot_split_is_refused_and_leaves_no_process(golden_dir):
    import psutil

    before = {p.pid for p in psutil.Process().children(recursive=True)}
    with pytest.raises(
        CheckpointError, match=r"num_attention_heads \(4\) is not divisible by the tensor-parallel size \(3\)"
    ):
        LLM(golden_dir / "tiny-bailing", tensor_parallel_size=3)
    assert {p.pid for p in psutil.Process().children(recursive=True)} <= before


def test_bad_parallel_options_are_refused_before_anything_starts(golden_dir):
    with pytest.raises(ValueError, match="tensor_parallel_size must be >= 1"):
        LLM(golden_dir / "tiny-bailing", tensor_parallel_size=0)


def test_a_rank_that_dies_breaks_the_group_at_once_and_new_requests_are_refused(golden_dir):
    import time

    from engine import RequestError

    reasons: list[str] = []
    with LLM(golden_dir / "tiny-bailing", tensor_parallel_size=2) as llm:
        llm.engine.on_group_failure = reasons.append
        (follower,) = llm.engine.ranks.procs
        follower.kill()
        deadline = time.monotonic() + 10
        while not reasons and time.monotonic() < deadline:
            time.sleep(0.05)
        assert reasons and reasons[0].startswith("rank 1 exited with code -9")
        with pytest.raises(RequestError, match="rank group failed"):
            llm.generate([[5, 6, 7]], SamplingParams(max_tokens=2))
