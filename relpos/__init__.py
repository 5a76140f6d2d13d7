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

_omp_env.before_import()  # libgomp's wait policy, read when _C loads libgomp
try:
    from . import _C
finally:
    _omp_env.after_import()
from ._config import __version__, config, get_num_threads, max_threads, set_num_threads, show_config
from .tensor import Function, Tensor, enable_grad, is_grad_enabled, no_grad, tensor
from . import functional, nn, optim  # noqa: I001
from .serialization import CheckpointError, load, save
from . import encodings, models, data, train, experiments, probe  # noqa: I001

# the model classes also live in relpos.nn, where torch users look for them; nn itself never
# imports models (a layer above it), so the names are put there from here
nn.TransformerBlock = models.TransformerBlock
nn.TransformerLM = models.TransformerLM
nn.TransformerEncoder = models.TransformerEncoder
nn.__all__ += ["TransformerBlock", "TransformerLM", "TransformerEncoder"]

__all__ = ["Tensor", "Function", "tensor", "no_grad", "enable_grad", "is_grad_enabled",
           "functional", "nn", "optim", "encodings", "models", "data", "train", "experiments", "probe",
           "save", "load", "CheckpointError", "show_config", "set_num_threads", "get_num_threads", "config", "max_threads", "__version__"]
