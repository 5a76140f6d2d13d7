"""relpos.encodings: every position encoding, behind one interface.

    >>> import relpos
    >>> relpos.encodings.available()          # a table: name, channel, parameters, causal-only, paper
    >>> enc = relpos.encodings.get("alibi", n_heads=8)
    >>> relpos.encodings.bias_matrix(enc, 4, 4).shape
    (8, 4, 4)
"""
# The catalogue: each module registers its encodings on import.
from . import absolute, bias, relative, rotary  # noqa: E402,F401,I001
from .base import CONTEXT_KEYS, DistanceBias, Encoding, distance_window
from .checks import GradcheckReport, gradcheck  # noqa: E402
from .helpers import *  # noqa: E402,F401,F403
from .helpers import __all__ as _helpers_all  # noqa: E402
from .registry import (  # noqa: F401
                       _REGISTRY,
                       EncodingTable,
                       available,
                       bias_matrix,
                       build,
                       encoding_options,
                       get,
                       is_encoding,
                       lookup,
                       register,
)

__all__ = ["Encoding", "DistanceBias", "CONTEXT_KEYS", "distance_window", "register", "get", "available",
           "bias_matrix", "EncodingTable", "gradcheck", "GradcheckReport"] + list(_helpers_all)
