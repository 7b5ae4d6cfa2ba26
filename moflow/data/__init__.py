"""MoFlow data: SMILES sources, downloads, graph encoding and the npz cache dataset."""
