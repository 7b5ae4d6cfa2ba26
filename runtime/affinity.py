"""GPU affinity: pin each local rank to the CPU cores (and memory) of its GPU's NUMA node.

``--gpu_affinity`` modes, for local rank ``r`` whose GPU's node has cores ``C`` (as NVML reports them,
hyperthread siblings grouped with their physical core) shared by the ``k`` local GPUs of that node:

=================  ====================================================================================
mode               cores of rank ``r``
=================  ====================================================================================
``none``           unchanged (the operating system schedules freely)
``socket``         all of ``C`` (ranks on one node share its cores)
``socket_unique``  ``C`` split into ``k`` contiguous, disjoint slices; rank ``r`` takes its own slice
``single``         the first physical core of ``C`` (ranks on one node share it)
``single_unique``  one physical core of ``C`` per rank, disjoint
=================  ====================================================================================

Cores outside the process's allowed set (a Slurm cpuset, a container's cgroup) are never used:
NVML's cores are intersected with ``os.sched_getaffinity(0)`` first, and where nothing (or too
little for the mode) remains the process runs unpinned and says so in one line.
:func:`cores_per_rank` tells the data loader how many cores this rank may use.

Memory: where libnuma is present the process prefers its node's memory (``numa_set_preferred``);
otherwise Linux's first-touch policy places pages near the pinned cores anyway.

Without CUDA, without the ``nvidia-ml-py`` package or without a working NVML driver the call does
nothing and says so once. :func:`select_cores` is a pure function, tested with fake topologies.
"""
from __future__ import annotations

import ctypes
import glob
import os
import re
from typing import Dict, List, Optional, Sequence

MODES = ("none", "socket", "socket_unique", "single", "single_unique")
_SAID: set = set()
_CORES_PER_RANK: Optional[float] = None


def cores_per_rank() -> Optional[float]:
    """The cores this rank may use after :func:`set_affinity` pinned it (shared cores divided among
    the ranks sharing them); None when it did not pin."""
    return _CORES_PER_RANK


def _say_once(message: str) -> None:
    if message not in _SAID and os.environ.get("LOCAL_RANK", "0") == "0":
        print(f"gpu_affinity: {message}", flush=True)
    _SAID.add(message)


def physical_cores(cores: Sequence[int], siblings: Dict[int, Sequence[int]]) -> List[List[int]]:
    """Group ``cores`` into physical cores (each a sorted list of its hyperthreads), in core order."""
    groups, seen = [], set()
    for core in sorted(cores):
        if core in seen:
            continue
        group = sorted(c for c in siblings.get(core, [core]) if c in set(cores)) or [core]
        seen.update(group)
        groups.append(group)
    return groups


def select_cores(mode: str, node_cores: Sequence[int], rank_on_node: int, ranks_on_node: int,
                 siblings: Optional[Dict[int, Sequence[int]]] = None) -> List[int]:
    """The CPU cores local rank ``rank_on_node`` (of ``ranks_on_node`` sharing the node) is pinned to."""
    if mode not in MODES:
        raise ValueError(f"unknown --gpu_affinity mode {mode!r}; choose from {MODES}")
    if not node_cores:
        raise ValueError("the GPU's NUMA node reports no CPU cores")
    if not 0 <= rank_on_node < ranks_on_node:
        raise ValueError(f"rank {rank_on_node} outside [0, {ranks_on_node})")
    groups = physical_cores(node_cores, siblings or {})
    if mode == "socket":
        return sorted(c for g in groups for c in g)
    if mode == "single":
        return groups[0]
    if mode == "single_unique":
        if ranks_on_node > len(groups):
            raise ValueError(f"{ranks_on_node} ranks share a node with {len(groups)} physical cores: "
                             "too few for single_unique; use socket or single")
        return groups[rank_on_node]
    # socket_unique: contiguous, as even as possible (the first slices take one extra core)
    per, extra = divmod(len(groups), ranks_on_node)
    if per == 0:
        raise ValueError(f"{ranks_on_node} ranks share a node with {len(groups)} physical cores: "
                         "too few for socket_unique; use socket")
    start = rank_on_node * per + min(rank_on_node, extra)
    stop = start + per + (1 if rank_on_node < extra else 0)
    return sorted(c for g in groups[start:stop] for c in g)


def _parse_cpu_list(text: str) -> List[int]:
    cores = []
    for part in text.strip().split(","):
        if not part:
            continue
        a, _, b = part.partition("-")
        cores.extend(range(int(a), int(b or a) + 1))
    return cores


def thread_siblings() -> Dict[int, List[int]]:
    """Hyperthread siblings of every core, from /sys (empty where not available)."""
    out = {}
    for path in glob.glob("/sys/devices/system/cpu/cpu[0-9]*/topology/thread_siblings_list"):
        core = int(re.search(r"cpu(\d+)/", path).group(1))
        with open(path) as f:
            out[core] = _parse_cpu_list(f.read())
    return out


def _nvml_node_cores(gpu: int) -> List[int]:
    import pynvml

    handle = pynvml.nvmlDeviceGetHandleByIndex(gpu)
    words = (os.cpu_count() + 63) // 64
    mask = pynvml.nvmlDeviceGetCpuAffinity(handle, words)  # 64-bit words, core 0 = bit 0 of word 0
    return [64 * w + b for w, word in enumerate(mask) for b in range(64) if (int(word) >> b) & 1]


def _prefer_node_memory(cores: Sequence[int]) -> None:
    try:
        numa = ctypes.CDLL("libnuma.so.1")
    except OSError:
        return
    if numa.numa_available() < 0:
        return
    node = numa.numa_node_of_cpu(int(cores[0]))
    if node >= 0:
        numa.numa_set_preferred(node)


def set_affinity(mode: str, local_rank: int, device_type: str) -> Optional[List[int]]:
    """Pin this process as ``mode`` says; returns the cores, or None when nothing was done."""
    if mode == "none":
        return None
    if device_type != "cuda":
        _say_once(f"--gpu_affinity {mode} ignored: no CUDA device")
        return None
    try:
        import pynvml

        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        physical = [int(v) for v in visible.split(",")] if visible and all(
            v.strip().isdigit() for v in visible.split(",")) else list(range(count))
        gpu = physical[local_rank]
        node_of = {g: tuple(_nvml_node_cores(g)) for g in physical}
    except Exception as err:  # noqa: BLE001 - no package, no driver, no permission: run unpinned
        _say_once(f"--gpu_affinity {mode} ignored: NVML is not available ({type(err).__name__}: {err})")
        return None
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", len(physical)))
    peers = [r for r in range(local_world) if r < len(physical) and node_of[physical[r]] == node_of[gpu]]
    allowed = set(os.sched_getaffinity(0))
    node_cores = [c for c in node_of[gpu] if c in allowed]
    try:
        if not node_cores:
            raise ValueError(f"none of GPU {gpu}'s cores is in this process's allowed CPU set "
                             f"({len(allowed)} cores; a cpuset or cgroup)")
        cores = select_cores(mode, node_cores, peers.index(local_rank), len(peers), thread_siblings())
    except ValueError as err:
        _say_once(f"--gpu_affinity {mode} ignored: {err}")
        return None
    os.sched_setaffinity(0, cores)
    _prefer_node_memory(cores)
    global _CORES_PER_RANK
    _CORES_PER_RANK = len(cores) / (len(peers) if mode in ("socket", "single") else 1)
    return cores
