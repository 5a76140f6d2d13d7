"""relpos.nn: Module, Parameter, layers and initialisers.

    >>> import numpy as np
    >>> from relpos import nn
    >>> class Net(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.w = nn.Parameter(np.zeros((3, 4), np.float32))
"""
from .module import Module, Parameter, IncompatibleKeys
from . import init
from .layers import (Linear, Embedding, LayerNorm, RMSNorm, Dropout, GELU, ReLU, SiLU, Identity,
                     Sequential, ModuleList, MLP, activation)

__all__ = ["Module", "Parameter", "IncompatibleKeys", "init", "Linear", "Embedding", "LayerNorm", "RMSNorm",
           "Dropout", "GELU", "ReLU", "SiLU", "Identity", "Sequential", "ModuleList", "MLP", "activation"]
from .attention import MultiHeadAttention, KVCache; __all__ += ["MultiHeadAttention", "KVCache"]  # attention area
from ..models import TransformerBlock, TransformerLM, TransformerEncoder; __all__ += ["TransformerBlock", "TransformerLM", "TransformerEncoder"]  # exp area
