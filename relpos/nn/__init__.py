"""relpos.nn: Module, Parameter, layers and initialisers.

    >>> from relpos import nn
    >>> class Net(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.w = nn.Parameter(np.zeros((3, 4), np.float32))
"""
from .module import Module, Parameter, IncompatibleKeys

__all__ = ["Module", "Parameter", "IncompatibleKeys"]
from ..models import TransformerBlock, TransformerLM, TransformerEncoder; __all__ += ["TransformerBlock", "TransformerLM", "TransformerEncoder"]  # exp area
