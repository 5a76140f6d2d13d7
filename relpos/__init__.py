"""relpos: small transformers on NumPy arrays with a C core, made to compare
position encodings (absolute, rotary, bias, relative-content, complex).

    >>> import relpos
    >>> relpos.show_config()

The package is layered, each layer importing only those below it (checked by
import-linter, see pyproject.toml): ``tensor`` (autograd) -> ``functional`` ->
``nn`` -> ``encodings`` -> ``models`` -> ``data`` / ``train`` ->
``experiments`` / ``probe`` -> ``cli``.
"""
from . import _omp_env

# libgomp reads its wait policy when _C loads it, so the extension loads first, here
_omp_env.before_import()
try:
    from . import _C  # noqa: F401
finally:
    _omp_env.after_import()
from . import data, encodings, experiments, functional, models, nn, optim, probe, train  # noqa: E402
from ._config import (  # noqa: E402
    __version__,
    config,
    get_num_threads,
    max_threads,
    set_num_threads,
    show_config,
)
from .serialization import CheckpointError, load, save  # noqa: E402
from .tensor import Function, Tensor, enable_grad, is_grad_enabled, no_grad, tensor  # noqa: E402

# the model classes also live in relpos.nn, where torch users look for them; nn itself never
# imports models (a layer above it), so the names are put there from here
nn.TransformerBlock = models.TransformerBlock
nn.TransformerLM = models.TransformerLM
nn.TransformerEncoder = models.TransformerEncoder
nn.__all__ += ["TransformerBlock", "TransformerLM", "TransformerEncoder"]

__all__ = ["Tensor", "Function", "tensor", "no_grad", "enable_grad", "is_grad_enabled",
           "functional", "nn", "optim", "encodings", "models", "data", "train", "experiments", "probe",
           "save", "load", "CheckpointError", "show_config", "set_num_threads", "get_num_threads", "config",
           "max_threads", "__version__"]
