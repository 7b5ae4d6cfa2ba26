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
