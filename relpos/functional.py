"""relpos.functional: every differentiable op as a function on Tensors.

Each op is a :class:`relpos.tensor.Function` defined in ``relpos._fn.<area>``;
this module gathers them.
"""
from ._fn.attention import *  # noqa: F401,F403
from ._fn.attention import __all__ as _attention_all
from ._fn.encoded import attention  # noqa: F401
from ._fn.fused import *  # noqa: F401,F403
from ._fn.fused import __all__ as _fused_all
from ._fn.linalg import *  # noqa: F401,F403
from ._fn.linalg import __all__ as _linalg_all
from ._fn.ops import *  # noqa: F401,F403
from ._fn.ops import __all__ as _ops_all
from ._fn.views import *  # noqa: F401,F403
from ._fn.views import __all__ as _views_all

__all__ = (["attention"] + list(_views_all) + list(_linalg_all) + list(_ops_all) + list(_attention_all)
           + list(_fused_all))
