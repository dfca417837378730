"""PyTorch interop (optional: needs ``torch``): run a model's ``nn.Linear`` layers through
vkqlinear.

* :class:`QuantizedLinear`: an ``nn.Module`` holding a :class:`~vkqlinear.QLinear`;
  ``forward`` takes a float tensor ``[..., K]`` on the CPU and returns ``[..., N]`` in the
  input's dtype (the matmul runs as the contract's W4A8 linear with on-device dynamic
  activation quantization).
* :func:`quantize_linears`: replaces, in place, every ``nn.Linear`` of a model whose input
  size the group size divides.

Inference only: no gradients flow through a :class:`QuantizedLinear`.
"""

from __future__ import annotations

import warnings

import torch

from .qlinear import QLinear

__all__ = ["QuantizedLinear", "quantize_linears"]


class QuantizedLinear(torch.nn.Module):
    """A drop-in, inference-only replacement of ``torch.nn.Linear``."""

    def __init__(self, qlinear, algorithm="auto"):
        super().__init__()
        if not isinstance(qlinear, QLinear):
            raise TypeError(f"qlinear: expected vkqlinear.QLinear, got {type(qlinear).__name__}")
        self.qlinear = qlinear
        self.algorithm = algorithm
        self.in_features = qlinear.in_features
        self.out_features = qlinear.out_features

    @classmethod
    def from_linear(cls, linear, group_size=32, symmetric=False, method="minmax",
                    device=None, algorithm="auto"):
        """Quantize an ``nn.Linear`` (see :meth:`vkqlinear.QLinear.from_float`)."""
        if not isinstance(linear, torch.nn.Linear):
            raise TypeError(f"linear: expected torch.nn.Linear, got {type(linear).__name__}")
        w = linear.weight.detach().to(torch.float32).cpu().numpy()
        b = None if linear.bias is None else \
            linear.bias.detach().to(torch.float32).cpu().numpy()
        q = QLinear.from_float(w, b, group_size=group_size, symmetric=symmetric,
                               method=method, device=device)
        return cls(q, algorithm)

    def forward(self, x):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
        if x.device.type != "cpu":
            raise ValueError(f"x: expected a CPU tensor, got one on {x.device}")
        if not x.is_floating_point():
            raise TypeError(f"x: expected a floating-point tensor, got {x.dtype}")
        y = self.qlinear(x.detach().to(torch.float32).contiguous(), algorithm=self.algorithm)
        return y.to(x.dtype)

    def extra_repr(self):
        w = self.qlinear.weights
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"group_size={w.group_size}, bias={self.qlinear.bias is not None}, "
                f"algorithm={self.algorithm!r}")


def quantize_linears(model, group_size=32, *, symmetric=False, method="minmax", device=None,
                     algorithm="auto", include=None):
    """Replace every ``nn.Linear`` in ``model`` (in place) by a :class:`QuantizedLinear`.

    ``include(name, module) -> bool`` restricts which layers (default: all). Layers whose
    ``in_features`` the group size does not divide are left as they are, with a warning.
    Returns ``model``.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    skipped = []
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if type(child) is not torch.nn.Linear:
                continue
            if include is not None and not include(full, child):
                continue
            if child.in_features % group_size:
                skipped.append(full)
                continue
            setattr(module, child_name, QuantizedLinear.from_linear(
                child, group_size, symmetric, method, device, algorithm))
    if skipped:
        warnings.warn(f"quantize_linears: kept {len(skipped)} Linear layer(s) in float, "
                      f"in_features not a multiple of group_size={group_size}: "
                      f"{', '.join(skipped)}", stacklevel=2)
    return model
