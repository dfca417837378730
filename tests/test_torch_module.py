"""vkqlinear.torch: QuantizedLinear and quantize_linears on a small model."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import vkqlinear as vq  # noqa: E402
from vkqlinear.torch import QuantizedLinear, quantize_linears  # noqa: E402


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 96), torch.nn.GELU(),
                               torch.nn.Sequential(torch.nn.Linear(96, 40, bias=False)),
                               torch.nn.Linear(40, 10))   # 40: not a multiple of 32


def test_quantize_linears_replaces_and_matches_qlinear(device):
    model = _model()
    x = torch.randn(3, 5, 64)
    with torch.no_grad():
        ref = model(x)
    with pytest.warns(UserWarning, match="kept 1 Linear.*: 3$"):
        quantize_linears(model, group_size=32)
    assert isinstance(model[0], QuantizedLinear) and isinstance(model[2][0], QuantizedLinear)
    assert type(model[3]) is torch.nn.Linear                 # in_features 40: kept, warned
    with torch.no_grad():
        y = model(x)
    assert y.shape == ref.shape and y.dtype == torch.float32
    # the first layer is exactly QLinear on the same input
    q = model[0].qlinear
    np.testing.assert_array_equal(model[0](x).numpy(), q(x.numpy()))
    # and the whole model stays close to float (4-bit weights, int8 activations)
    cos = torch.nn.functional.cosine_similarity(y.flatten(), ref.flatten(), dim=0)
    assert cos > 0.98


def test_include_filter_and_dtypes(device):
    model = _model()
    quantize_linears(model, group_size=32, include=lambda name, m: name == "0")
    assert isinstance(model[0], QuantizedLinear) and type(model[2][0]) is torch.nn.Linear
    y = model[0](torch.randn(2, 64, dtype=torch.float64))
    assert y.dtype == torch.float64 and y.shape == (2, 96)
    assert "group_size=32" in repr(model[0])


def test_errors(device):
    layer = QuantizedLinear.from_linear(torch.nn.Linear(32, 8), group_size=32)
    with pytest.raises(TypeError, match="^x"):
        layer(np.zeros((1, 32), np.float32))
    with pytest.raises(TypeError, match="^x"):
        layer(torch.zeros(1, 32, dtype=torch.int32))
    with pytest.raises(TypeError, match="^linear"):
        QuantizedLinear.from_linear(torch.nn.Conv1d(1, 1, 1))
    with pytest.raises(TypeError, match="^model"):
        quantize_linears([torch.nn.Linear(32, 8)])
    with pytest.raises(ValueError, match="^group_size"):
        QuantizedLinear.from_linear(torch.nn.Linear(32, 8), group_size=12)
    assert isinstance(vq.QLinear, type)
