"""Making PyTorch models HE-friendly before they are exported and compiled (the ``hecc[torch]``
extra; PyTorch is never needed to compile or run).

- ``he_friendly(model, data, ...)`` (``friendly``): activations hecc would approximate with a
  high-degree polynomial become trainable low-degree ones, MaxPool becomes average pooling, and
  the model is fine-tuned by distillation from the original.
- ``block_prune(model, program_or_layout, target, data, ...)`` (``prune``): weights pruned in the
  blocks the compiled slots layout turns into ciphertext products and rotations.

Both return an ordinary ``torch.nn.Module`` that exports to ONNX and compiles with ``hecc compile``.
"""
from __future__ import annotations

from ..errors import UserError


def _require_torch():
    try:
        import torch  # noqa: F401
    except ImportError:
        raise UserError("hecc.torch needs PyTorch: pip install 'hecc[torch]'") from None


def he_friendly(*args, **kwargs):
    _require_torch()
    from .friendly import he_friendly as run
    return run(*args, **kwargs)


def block_prune(*args, **kwargs):
    _require_torch()
    from .prune import block_prune as run
    return run(*args, **kwargs)


__all__ = ["he_friendly", "block_prune"]
