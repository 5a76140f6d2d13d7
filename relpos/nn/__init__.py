"""relpos.nn: Module, Parameter, layers and initialisers.

    >>> import numpy as np
    >>> from relpos import nn
    >>> class Net(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.w = nn.Parameter(np.zeros((3, 4), np.float32))
"""
from . import init
from .attention import KVCache, MultiHeadAttention
from .layers import (
                     GELU,
                     MLP,
                     Dropout,
                     Embedding,
                     Identity,
                     LayerNorm,
                     Linear,
                     ModuleList,
                     ReLU,
                     RMSNorm,
                     Sequential,
                     SiLU,
                     activation,
)
from .module import IncompatibleKeys, Module, Parameter

__all__ = ["Module", "Parameter", "IncompatibleKeys", "init", "Linear", "Embedding", "LayerNorm", "RMSNorm",
           "Dropout", "GELU", "ReLU", "SiLU", "Identity", "Sequential", "ModuleList", "MLP", "activation",
           "MultiHeadAttention", "KVCache"]
# TransformerLM, TransformerBlock and TransformerEncoder live in relpos.models (a layer above the
# encodings); the package root also puts them in this namespace (relpos.nn.TransformerLM), nn never
# imports them.
