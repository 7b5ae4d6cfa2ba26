"""GPU affinity: core selection on fake topologies; a clean no-op without GPUs."""
import pytest

from runtime import affinity
from runtime.affinity import physical_cores, select_cores, set_affinity

# Two sockets of 4 physical cores with hyperthreads: core c and c + 8 are siblings.
NODE0 = [0, 1, 2, 3, 8, 9, 10, 11]
NODE1 = [4, 5, 6, 7, 12, 13, 14, 15]
SIBLINGS = {c: sorted({c % 8, c % 8 + 8}) for c in range(16)}


def test_physical_cores_group_hyperthreads():
    assert physical_cores(NODE0, SIBLINGS) == [[0, 8], [1, 9], [2, 10], [3, 11]]
    assert physical_cores([5, 6], {}) == [[5], [6]]


def test_modes_on_a_two_socket_node():
    assert select_cores("socket", NODE1, 1, 2, SIBLINGS) == NODE1
    assert select_cores("single", NODE1, 1, 2, SIBLINGS) == [4, 12]
    assert select_cores("single_unique", NODE0, 0, 2, SIBLINGS) == [0, 8]
    assert select_cores("single_unique", NODE0, 1, 2, SIBLINGS) == [1, 9]
    halves = [select_cores("socket_unique", NODE0, r, 2, SIBLINGS) for r in range(2)]
    assert halves == [[0, 1, 8, 9], [2, 3, 10, 11]]
    thirds = [select_cores("socket_unique", NODE0, r, 3, SIBLINGS) for r in range(3)]
    assert thirds == [[0, 1, 8, 9], [2, 10], [3, 11]]  # uneven: contiguous, disjoint, covering


def test_unique_modes_refuse_too_many_ranks():
    with pytest.raises(ValueError, match="too few for single_unique"):
        select_cores("single_unique", [0, 1], 2, 3)
    with pytest.raises(ValueError, match="too few for socket_unique"):
        select_cores("socket_unique", [0, 1], 2, 3)
    with pytest.raises(ValueError, match="unknown --gpu_affinity mode"):
        select_cores("numa", [0], 0, 1)


def test_no_gpu_does_nothing_and_says_so_once(capsys, monkeypatch):
    monkeypatch.setattr(affinity, "_SAID", set())       # earlier runs in this process may have said it
    monkeypatch.delenv("LOCAL_RANK", raising=False)     # only local rank 0 speaks
    assert set_affinity("socket_unique", 0, "cpu") is None
    assert set_affinity("socket_unique", 0, "cpu") is None
    assert capsys.readouterr().out.count("ignored: no CUDA device") == 1
    assert set_affinity("none", 0, "cuda") is None


# ---- set_affinity on a fake 224-CPU node with 8 GPUs (NVML faked) --------------------------------------
# two NUMA nodes of 56 physical cores with hyperthreads (c and c + 112 are siblings); GPUs 0-3 on node 0
BIG_NODES = [list(range(0, 56)) + list(range(112, 168)), list(range(56, 112)) + list(range(168, 224))]


class FakeNVML:
    def nvmlInit(self):
        pass

    def nvmlDeviceGetCount(self):
        return 8

    def nvmlDeviceGetHandleByIndex(self, gpu):
        return gpu

    def nvmlDeviceGetCpuAffinity(self, gpu, words):
        mask = [0] * words
        for core in BIG_NODES[gpu // 4]:
            mask[core // 64] |= 1 << (core % 64)
        return mask


@pytest.fixture
def big_node(monkeypatch):
    """The fake node; yields the set of cores the process is allowed (change it to model a cpuset)."""
    import os
    import sys

    allowed = set(range(224))
    pinned = []

    def setaffinity(pid, cores):
        if not set(cores) <= allowed:
            raise OSError(22, "Invalid argument")        # what Linux says outside the cpuset
        pinned.append(sorted(cores))

    monkeypatch.setitem(sys.modules, "pynvml", FakeNVML())
    monkeypatch.setattr(os, "cpu_count", lambda: 224)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(allowed))
    monkeypatch.setattr(os, "sched_setaffinity", setaffinity)
    monkeypatch.setattr(affinity, "thread_siblings", lambda: {c: sorted({c % 112, c % 112 + 112}) for c in range(224)})
    monkeypatch.setattr(affinity, "_prefer_node_memory", lambda cores: None)
    monkeypatch.setattr(affinity, "_SAID", set())
    monkeypatch.setattr(affinity, "_CORES_PER_RANK", None, raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    yield allowed, pinned


def test_pinned_ranks_keep_four_loader_workers(big_node, monkeypatch):
    """socket_unique gives each of the 8 ranks 14 physical cores (28 threads): 4 workers, not 28 // 8 - 1 = 2."""
    from runtime.cli import resolve_num_workers

    allowed, pinned = big_node
    monkeypatch.setenv("LOCAL_RANK", "5")
    cores = set_affinity("socket_unique", 5, "cuda")
    assert len(cores) == 28 and set(cores) <= set(BIG_NODES[1]) and pinned == [sorted(cores)]
    allowed.intersection_update(cores)                # the pinned process now sees only its cores
    assert resolve_num_workers(None, "cuda") == 4
    assert resolve_num_workers(None, "cpu") == 0 and resolve_num_workers(3, "cuda") == 3


def test_unpinned_ranks_share_the_allowed_cores(big_node):
    from runtime.cli import resolve_num_workers

    allowed, _ = big_node
    allowed.intersection_update(range(16))            # a 16-core cgroup for 8 ranks: 2 cores each
    assert resolve_num_workers(None, "cuda") == 1


def test_pinning_stays_inside_the_allowed_cpuset(big_node, monkeypatch, capsys):
    """A Slurm cpuset holding only node 0's first 16 cores: GPU 5's node is outside it, so the rank runs
    unpinned with one line; GPU 1's node overlaps it, so that rank is pinned inside it."""
    allowed, pinned = big_node
    allowed.intersection_update(range(16))
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert set_affinity("socket_unique", 5, "cuda") is None and pinned == []
    assert "none of GPU 5's cores is in this process's allowed CPU set" in capsys.readouterr().out
    cores = set_affinity("socket_unique", 1, "cuda")
    assert cores == [4, 5, 6, 7] and pinned == [[4, 5, 6, 7]]     # 16 allowed cores over 4 ranks of node 0
    assert set_affinity("single_unique", 1, "cuda") == [1]


def test_too_few_allowed_cores_runs_unpinned(big_node, monkeypatch, capsys):
    allowed, pinned = big_node
    allowed.intersection_update({0, 1})
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert set_affinity("socket_unique", 2, "cuda") is None and pinned == []
    assert "too few for socket_unique" in capsys.readouterr().out
