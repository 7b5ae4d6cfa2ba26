"""SE(3)-equivariant layers."""
from se3_transformer.model.layers.attention import AttentionBlockSE3, AttentionSE3
from se3_transformer.model.layers.convolution import ConvSE3, FuseLevel, RadialProfile
from se3_transformer.model.layers.linear import LinearSE3
from se3_transformer.model.layers.norm import NormSE3
from se3_transformer.model.layers.pooling import GraphPooling

__all__ = ["AttentionBlockSE3", "AttentionSE3", "ConvSE3", "FuseLevel", "RadialProfile", "LinearSE3", "NormSE3",
           "GraphPooling"]
