"""Graph-parallel DimeNet++ and GemNet-T/dT for OC20-style energies and forces.

data -> models -> parallel -> train: ``graph_parallel.data`` reads and writes OC20 S2EF LMDBs and
builds periodic radius graphs, ``graph_parallel.parallel`` splits one graph across the ranks of a
graph-parallel group, ``graph_parallel.models`` holds the networks; ``graph_parallel.train``,
``graph_parallel.evaluate`` and ``graph_parallel.predict`` are the entry points (``engine`` is what
they share).
"""
