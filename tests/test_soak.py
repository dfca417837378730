"""Lifetime under load: many calls with mixed shapes and both output modes on one device.
RSS must stay flat after warm-up and the library's device objects bounded by its caches.
A short run in CI; the full 10,000-call run under `pytest -m slow`."""

import resource

import numpy as np
import pytest

import vkqlinear as vq

from .conftest import make_layer


def _rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _soak(device, calls, rng):
    layers = []
    for k, n, g in ((64, 16, 32), (128, 40, 32), (256, 8, 64)):
        d = make_layer(rng, 16, k, n, g)
        qw = vq.prepack(d["w_packed"], g, d["w_scales"], d["w_zeros"], device=device)
        layers.append((d, qw))
    out_s = np.full(16, 0.05, np.float32)
    out_z = np.zeros(16, np.int32)

    def one(i):
        d, qw = layers[i % 3]
        t = 1 + (i * 7) % 16
        alg = ("tiled", "cooperative", "auto")[i % 3]
        x = (d["x_q"][:t], d["x_scale"][:t], d["x_zero_point"][:t])
        if i % 2:
            return vq.linear_qta8a_qga4w_qta8o(*x, qw, out_scale=out_s[:t],
                                               out_zero_point=out_z[:t], algorithm=alg,
                                               device=device)
        return vq.linear_qta8a_qga4w(*x, qw, algorithm=alg, device=device)

    warm = min(300, calls // 4)
    for i in range(warm):
        one(i)
    before = _rss_mb()
    for i in range(warm, calls):
        one(i)
        if i % 97 == 0:   # spot-check the answers while soaking
            d, qw = layers[i % 3]
            ref = vq.linear_qta8a_qga4w(d["x_q"][:5], d["x_scale"][:5], d["x_zero_point"][:5],
                                        qw, algorithm="reference")
            y = vq.linear_qta8a_qga4w(d["x_q"][:5], d["x_scale"][:5], d["x_zero_point"][:5],
                                      qw, algorithm="tiled", device=device)
            np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
    growth = _rss_mb() - before
    owners = [vq.DeviceLinear.of(qw, device) for _, qw in layers]
    recorded = sum(len(dl.calls) for dl in owners)
    bound = sum(dl.MAX_CALLS for dl in owners)
    return growth, recorded, bound


def test_soak_short(device, rng):
    growth, recorded, bound = _soak(device, 1200, rng)
    assert recorded <= bound
    assert growth < 50, f"RSS grew by {growth:.1f} MB after warm-up"


@pytest.mark.slow
def test_soak_full(device, rng):
    growth, recorded, bound = _soak(device, 10_000, rng)
    assert recorded <= bound
    assert growth < 50, f"RSS grew by {growth:.1f} MB after warm-up"
