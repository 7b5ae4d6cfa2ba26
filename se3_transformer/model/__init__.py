"""SE(3)-Transformer model: fibers, bases, equivariant layers and the full network."""
from se3_transformer.model.basis import compute_basis, fuse_basis, get_basis
from se3_transformer.model.fiber import Fiber
from se3_transformer.model.layers import FuseLevel
from se3_transformer.model.transformer import SE3Transformer, SE3TransformerPooled

__all__ = ["Fiber", "FuseLevel", "SE3Transformer", "SE3TransformerPooled", "compute_basis", "fuse_basis",
           "get_basis"]
