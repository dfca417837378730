"""vkqlinear: Vulkan compute shaders for W4A8 quantized linear layers (``linear_qta8a_qga4w``,
the contract in docs/spec.md), driven from Python through Kompute.

Quick start::

    import numpy as np, vkqlinear as vq
    x_q, x_scale, x_zp = vq.quantize_per_token(np.random.randn(4, 256).astype(np.float32))
    w_packed, w_scales, w_zeros = vq.quantize_weights(np.random.randn(64, 256), 32)
    y = vq.linear_qta8a_qga4w(x_q, x_scale, x_zp, w_packed, 32, w_scales, w_zeros)
"""

from .device import Device, DeviceInfo, default_device, devices
from .device_linear import DeviceLinear
from .errors import (
                     CompilerNotFoundError,
                     DeviceClosedError,
    DeviceMemoryError,
                     ShaderCompileError,
                     VulkanUnavailableError,
)
from .kernels import Variant
from .ops import linear_dq8ca_q4gsw, linear_qta8a_qga4w, linear_qta8a_qga4w_qta8o
from .qlinear import DeviceTensor, QLinear
from .quant import (
                     dequantize_per_token,
                     dequantize_weights,
                     offsets_from_zero_points,
                     offsets_to_scales_and_zeros,
                     pack_int4,
                     quantize_per_token,
                     quantize_weights,
                     quantize_weights_search,
                     scales_and_zeros_to_offsets,
                     unpack_int4,
)
from .sources import from_executorch, from_torchao, load_gguf
from .weights import QuantizedWeights, prepack

__version__ = "0.1.0"


def __getattr__(name):
    # The tuner and the measurement code behind it load on use, not with the package.
    if name == "tune":
        from .measure.tuner import tune
        return tune
    raise AttributeError(f"module 'vkqlinear' has no attribute {name!r}")

__all__ = [
    "Device", "DeviceInfo", "default_device", "devices", "DeviceLinear", "Variant",
    "CompilerNotFoundError", "DeviceClosedError", "DeviceMemoryError", "ShaderCompileError",
    "VulkanUnavailableError",
    "linear_qta8a_qga4w", "linear_qta8a_qga4w_qta8o", "linear_dq8ca_q4gsw",
    "from_torchao", "from_executorch", "load_gguf", "tune",
    "dequantize_per_token", "dequantize_weights", "offsets_from_zero_points",
    "offsets_to_scales_and_zeros", "pack_int4", "quantize_per_token", "quantize_weights",
    "quantize_weights_search", "scales_and_zeros_to_offsets", "unpack_int4",
    "QuantizedWeights", "prepack", "QLinear", "DeviceTensor",
]
