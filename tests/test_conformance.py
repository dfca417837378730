"""Every GPU algorithm against SPEC.md on every case class (run on lavapipe in CI).

The cases live in vkqlinear.conformance, shared with `python -m vkqlinear conformance`;
each check names its case on failure.
"""

import pytest

from vkqlinear import conformance as C

CASES = C.cases()


@pytest.mark.parametrize("algorithm", C.ALGORITHMS + ("auto",))
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_gpu_conforms(case, algorithm, device):
    ok, msg = C.run_case(case, algorithm, device)
    assert ok, f"[{algorithm}] {case.name}: {msg}"


def test_conformance_cli_passes(device):
    from vkqlinear.__main__ import main
    assert main(["conformance", "--quick", "--device", str(device.index)]) == 0
