"""PyTorch interop (optional: needs ``torch``): run a model's ``nn.Linear`` layers through
vkqlinear.

* :class:`QuantizedLinear`: an ``nn.Module`` holding a :class:`~vkqlinear.QLinear`;
  ``forward`` takes a float tensor ``[..., K]`` on the CPU and returns ``[..., N]`` in the
  input's dtype (the matmul runs as the contract's W4A8 linear with on-device dynamic
  activation quantization).
* :func:`quantize_linears`: replaces, in place, every ``nn.Linear`` of a model whose input
  size the group size divides.
* :func:`convert_torchao`: replaces, in place, the layers of a model that torchao quantized
  (8da4w, either flow) with the same weights, exactly, and the same activation quantization.

Inference only: no gradients flow through a :class:`QuantizedLinear`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch

from .qlinear import QLinear
from .sources import from_torchao

__all__ = ["QuantizedLinear", "quantize_linears", "convert_torchao", "TorchaoConversion"]


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
                f"act_quant={self.qlinear.act_quant!r}, algorithm={self.algorithm!r}")


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


@dataclass
class TorchaoConversion:
    """What :func:`convert_torchao` did: the converted layers' names with the activation
    convention each uses, and the kept layers' names with the reason."""
    converted: dict = field(default_factory=dict)   # name -> act_quant
    kept: dict = field(default_factory=dict)        # name -> why it was kept

    def __str__(self):
        lines = [f"converted {len(self.converted)} layer(s), kept {len(self.kept)}"]
        lines += [f"  kept {name}: {why}" for name, why in self.kept.items()]
        return "\n".join(lines)


def _torchao_layer(module):
    """``(flow, why_not)`` for a module: flow ``"tensor"`` (a Linear whose weight is a torchao
    ``IntxUnpackedToInt8Tensor``) or ``"module"`` (``Int8DynActInt4WeightLinear``), or
    ``None`` with the reason it is not converted (``None`` too: not a linear layer)."""
    name = type(module).__name__
    if name == "Int8DynActInt4WeightLinear":
        return "module", None
    if not isinstance(module, torch.nn.Linear):
        return None, None
    w = module.weight
    if type(w).__name__ != "IntxUnpackedToInt8Tensor":
        return None, "not quantized by torchao (float weights)"
    if w.activation_quantization is None:
        return None, ("weight-only quantized: torchao computes it with float activations, "
                      "vkqlinear with int8 ones")
    if w.target_dtype != torch.int4:
        return None, f"{w.target_dtype} weights (vkqlinear takes 4-bit ones)"
    return "tensor", None


def convert_torchao(model, *, device=None, act_quant="torchao", algorithm="auto"):
    """Replace, in place, every layer of ``model`` that torchao quantized with 8da4w by a
    :class:`QuantizedLinear` holding the same weights (:func:`vkqlinear.from_torchao`).

    Both torchao flows are converted: ``quantize_(model,
    Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4, ...))`` (Linear layers
    with ``IntxUnpackedToInt8Tensor`` weights) and ``Int8DynActInt4WeightQuantizer``
    (``Int8DynActInt4WeightLinear`` modules). ``act_quant="torchao"`` (default) quantizes the
    activations as the source layer does ("torchao" for the first flow, "torchao-legacy",
    float32 eps, for the second), so that the converted model reproduces torchao's integers;
    ``"spec"`` uses the contract's convention. Returns a :class:`TorchaoConversion`; the
    layers not converted (float, weight-only, other bit widths, group sizes the kernels do
    not take) are kept, each with its reason.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if act_quant not in ("torchao", "torchao-legacy", "spec"):
        raise ValueError(f"act_quant: expected 'torchao', 'torchao-legacy' or 'spec', got "
                         f"{act_quant!r}")
    report = TorchaoConversion()
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            name = f"{parent_name}.{child_name}" if parent_name else child_name
            flow, why = _torchao_layer(child)
            if flow is None:
                if why is not None:
                    report.kept[name] = why
                continue
            try:
                weights = from_torchao(child)
            except (TypeError, ValueError) as e:
                report.kept[name] = str(e)
                continue
            bias = getattr(child, "bias", None)
            bias = None if bias is None else bias.detach().to(torch.float32).cpu().numpy()
            conv = act_quant
            if act_quant == "torchao" and flow == "module":
                conv = "torchao-legacy"
            layer = QuantizedLinear(QLinear(weights, bias, device, act_quant=conv), algorithm)
            setattr(parent, child_name, layer)
            report.converted[name] = conv
    return report
