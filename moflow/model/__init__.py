"""MoFlow model: invertible layers, the two flows and the full model."""
from moflow.model.moflow import MoFlow, MoFlowObjective, initialize_actnorm

__all__ = ["MoFlow", "MoFlowObjective", "initialize_actnorm"]
