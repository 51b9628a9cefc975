"""Where a group's ranks run: nodes, local devices, and torchrun's environment."""

from __future__ import annotations

import pytest

from engine.parallel.group import ParallelConfig
from engine.parallel.placement import GroupPlacement
from workers.config import WorkerConfig


def test_two_nodes_of_eight_ranks():
    node1 = GroupPlacement(
        ParallelConfig(16, True), nnodes=2, node_rank=1, master_addr="10.0.0.1", master_port=29500
    )
    assert node1.ranks_here() == list(range(8, 16)) and not node1.has_rank0
    assert [node1.local_rank(r) for r in node1.ranks_here()] == list(range(8))
    node0 = GroupPlacement(
        ParallelConfig(16, True), nnodes=2, node_rank=0, master_addr="10.0.0.1", master_port=29500
    )
    assert node0.has_rank0 and node0.ranks_here() == list(range(8))


def test_torchrun_environment_makes_each_process_one_rank():
    env = {
        "RANK": "5",
        "WORLD_SIZE": "8",
        "LOCAL_RANK": "1",
        "MASTER_ADDR": "10.0.0.2",
        "MASTER_PORT": "29400",
    }
    p = GroupPlacement.from_torchrun(env, expert_parallel=True)
    assert p.ranks_here() == [5] and p.local_rank(5) == 1 and not p.has_rank0
    assert (p.parallel.tensor_parallel_size, p.parallel.expert_parallel) == (8, True)
    assert (p.master_addr, p.master_port) == ("10.0.0.2", 29400)
    assert GroupPlacement.from_torchrun({}) is None


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"nnodes": 3}, r"nnodes \(3\) must be >= 1 and divide the tensor-parallel size \(4\)"),
        ({"nnodes": 2, "node_rank": 2, "master_port": 1}, r"node_rank must be in \[0, nnodes=2\)"),
        ({"nnodes": 2}, "needs master_port"),
    ],
)
def test_impossible_placements_are_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        GroupPlacement(ParallelConfig(4), **kw)


def test_a_worker_config_is_checked_and_torchrun_overrides_its_fields(tmp_path):
    with pytest.raises(ValueError, match=r"WorkerConfig: nnodes \(3\)"):
        WorkerConfig(
            redis_url="redis://x", family="ling", model_dir=tmp_path, tensor_parallel_size=4, nnodes=3
        )
    config = WorkerConfig(redis_url="redis://x", family="ling", model_dir=tmp_path, tensor_parallel_size=2)
    assert config.placement({}).ranks_here() == [0, 1]
    assert config.placement({"RANK": "0", "WORLD_SIZE": "4"}).parallel.tensor_parallel_size == 4
