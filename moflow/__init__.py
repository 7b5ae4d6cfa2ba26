"""MoFlow: molecular graph generation with normalizing flows (Zang & Wang, KDD 2020)."""
