"""Shared fixtures. The Vulkan device is probed in a subprocess (vkqlinear.devices), so a
driver crash fails the probe, not pytest.

Tests that need a Vulkan device take the ``device`` fixture (directly, or with
``@pytest.mark.usefixtures("device")`` when they open devices of their own). Without a
device they skip, saying why; with ``VKQLINEAR_REQUIRE_DEVICE=1`` (set by
``tools/vkq test``, so in CI) they fail instead. Every other test runs on the CPU alone.

The tests never read the user's tuning file: a tuned kernel or wait mode there would make
them depend on the machine's history."""

import os
import tempfile

import numpy as np
import pytest

import vkqlinear as vq


def pytest_configure(config):
    os.environ["VKQLINEAR_TUNING_FILE"] = os.path.join(
        tempfile.mkdtemp(prefix="vkqlinear-tests-"), "tuning.json")


@pytest.fixture(scope="session")
def device():
    """The default device (lavapipe in CI), opened once for the session."""
    try:
        dev = vq.Device()
    except vq.VulkanUnavailableError as e:
        if os.environ.get("VKQLINEAR_REQUIRE_DEVICE") == "1":
            pytest.fail(f"no Vulkan device, and VKQLINEAR_REQUIRE_DEVICE=1: {e}")
        pytest.skip(f"no Vulkan device: {e}")
    yield dev


@pytest.fixture
def tfile(tmp_path, monkeypatch):
    """A fresh tuning file for the test, re-read at every look."""
    from vkqlinear import tuning
    path = tmp_path / "tuning.json"
    monkeypatch.setenv("VKQLINEAR_TUNING_FILE", str(path))
    monkeypatch.setattr(tuning, "RECHECK_S", 0.0)
    return path


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def make_layer(rng, t, k, n, g, symmetric=False):
    """Random float activations and weights, quantized: the op's arguments."""
    x = rng.standard_normal((t, k)).astype(np.float32)
    w = (rng.standard_normal((n, k)) * 0.1).astype(np.float32)
    x_q, x_scale, x_zp = vq.quantize_per_token(x) if t else (
        np.zeros((0, k), np.int8), np.zeros(0, np.float32), np.zeros(0, np.int32))
    w_packed, w_scales, w_zeros = vq.quantize_weights(w, g, symmetric=symmetric)
    return dict(x_q=x_q, x_scale=x_scale, x_zero_point=x_zp, w_packed=w_packed,
                group_size=g, w_scales=w_scales, w_zeros=w_zeros)
