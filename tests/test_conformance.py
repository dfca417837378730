"""Every GPU algorithm against docs/spec.md on every case class (run on lavapipe in CI).

The cases live in vkqlinear.conformance, shared with `python -m vkqlinear conformance`;
each check names its case on failure.
"""

import pytest

from vkqlinear import conformance as C
from vkqlinear.kernels import Variant

CASES = C.cases()


# Every variant the library ships (a device runs those its features allow; lavapipe all).
KERNELS = ([("tiled", v) for v in ("portable", "int64", "texel+int64", "dot", "storage8")]
           + [("cooperative", v) for v in ("portable", "int64", "texel+int64", "dot", "storage8",
                                           "subgroup", "subgroup+int64",
                                           "subgroup+texel+int64", "subgroup+dot",
                                           "subgroup+storage8")]
           + [("auto", None)])


@pytest.mark.parametrize("algorithm,variant", KERNELS, ids=[f"{a}-{v}" for a, v in KERNELS])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_gpu_conforms(case, algorithm, variant, device):
    if variant is not None and (algorithm, Variant.parse(variant)) not in \
            C.kernel_variants(device):
        pytest.skip(f"{algorithm}/{variant} not supported by {device.name}")
    ok, msg = C.run_case(case, algorithm, device, variant)
    assert ok, f"[{algorithm}/{variant}] {case.name}: {msg}"


def test_every_variant_is_exercised_on_lavapipe(device):
    """lavapipe enables every feature the variants use: none may be skipped there."""
    if not device.info.is_lavapipe:
        pytest.skip(f"{device.name} is not lavapipe: its variants are the ones it supports")
    assert {(a, v.name) for a, v in C.kernel_variants(device)} == set(KERNELS[:-1])


def test_conformance_cli_passes(device):
    from vkqlinear.__main__ import main
    assert main(["conformance", "--quick", "--device", str(device.index)]) == 0
