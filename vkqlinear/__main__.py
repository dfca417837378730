"""The command line, ``python -m vkqlinear`` or ``vkqlinear``: info, demo, conformance,
bench, tune, shader-stats."""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from ._cli import help_text
from .kernels import KERNEL_ALGORITHMS


def _fmt_bytes(n):
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def cmd_info(args):
    from .compiler import cache_dir, compiler_version
    from .device import Device, devices
    from .kernels import lanes_for
    from .tuning import auto_threshold, device_entries, tuning_file
    infos = devices()
    try:
        opened = Device(args.device)
    except Exception as e:  # report what we can
        opened = None
        print(f"(could not open a device: {e})")
    for d in infos:
        mark = " (default)" if opened is not None and d.index == opened.index else ""
        lim = d.limits
        print(f"device {d.index}{mark}: {d.name}")
        print(f"  type {d.type}, vendor 0x{d.vendor_id:04x}, device 0x{d.device_id:04x}, "
              f"Vulkan {d.api_version}")
        print(f"  driver {d.driver_name} {d.driver_info} (version {d.driver_version})")
        print(f"  max workgroup size {lim['max_workgroup_size']}, invocations "
              f"{lim['max_workgroup_invocations']}, count {lim['max_workgroup_count']}")
        print(f"  shared memory {_fmt_bytes(lim['max_shared_memory'])}, storage buffer range "
              f"{_fmt_bytes(lim['max_storage_buffer_range'])}, memory heaps "
              f"{[_fmt_bytes(h) for h in d.memory_heaps]}")
        lo, hi = d.subgroup.get("min_size"), d.subgroup.get("max_size")
        sizes = f" (pipelines may run at {lo} to {hi})" if lo and hi and lo != hi else ""
        print(f"  subgroup size {d.subgroup['size']}{sizes}, operations "
              f"{', '.join(d.subgroup['operations'])}")
        print(f"  timestamp period {lim['timestamp_period_ns']} ns, valid bits "
              f"{lim['timestamp_valid_bits']}")
        stats = "VK_KHR_pipeline_executable_properties" in d.extensions
        print(f"  pipeline statistics (registers, spills; shader-stats --device "
              f"{d.index}): {'reported' if stats else 'not reported by this driver'}")
        if opened is not None and d.index == opened.index:
            print("  optional features (supported by the device / enabled on vkqlinear's "
                  "device):")
            for f, c in opened.capabilities().items():
                if isinstance(c, dict):
                    print(f"    {f:24s} supported={'yes' if c['supported'] else 'no ':3s}  "
                          f"enabled={'yes' if c['enabled'] else 'no'}   ({c['what']})")
                    if c.get("avoided"):
                        print(f"      not used on this driver: {c['avoided']} "
                              f"(vkqlinear.policy)")
            caps = opened.caps
            for alg in KERNEL_ALGORITHMS:
                print(f"  {alg} variants (default first): "
                      f"{', '.join(v.name for v in caps.variants(alg))}")
            wrong = opened.wrong_variants()
            print(f"  variants found wrong by their self-check (not used): "
                  f"{', '.join(sorted(wrong)) or 'none so far'}")
            for key, detail in sorted(wrong.items()):
                print(f"    {key}: {detail}")
            print(f"  weight layout lanes {lanes_for(caps)}, auto threshold T <= "
                  f"{auto_threshold(d)} -> cooperative where nothing is tuned (tuning "
                  f"file {tuning_file()})")
            entries = device_entries(d)
            print(f"  tuned points: {len(entries) or 'none (python -m vkqlinear tune)'}")
            for key, e in sorted(entries.items()):
                c = e.get("config", {})
                print(f"    {key:32s} {c.get('algorithm')} {c.get('variant')} tm={c.get('tm')} "
                      f"local={c.get('local_size')}")
    try:
        print(f"glslangValidator: {compiler_version().splitlines()[0]}")
    except Exception as e:
        print(f"glslangValidator: {e}")
    print(f"shader cache: {cache_dir()}")
    return 0


def cmd_demo(args):
    """A small worked example of both ops, checked against the reference path."""
    import vkqlinear as vq

    from .device import Device
    dev = Device(args.device)
    rng = np.random.default_rng(0)
    t, k, n, g = 4, 256, 64, 32
    x = rng.standard_normal((t, k)).astype(np.float32)
    w = rng.standard_normal((n, k)).astype(np.float32) * 0.1
    x_q, x_scale, x_zp = vq.quantize_per_token(x)
    w_packed, w_scales, w_zeros = vq.quantize_weights(w, g)
    print(f"device: {dev.name}")
    print(f"x [{t}, {k}] float32 -> x_q int8, per-token scale/zero point")
    print(f"w [{n}, {k}] float32 -> w_packed uint8 [{n}, {k // 2}], group size {g}")
    for alg in KERNEL_ALGORITHMS + ("auto",):
        t0 = time.perf_counter()
        y = vq.linear_qta8a_qga4w(x_q, x_scale, x_zp, w_packed, g, w_scales, w_zeros,
                                  algorithm=alg, device=dev)
        dt = time.perf_counter() - t0
        ref = vq.linear_qta8a_qga4w(x_q, x_scale, x_zp, w_packed, g, w_scales, w_zeros,
                                    algorithm="reference")
        print(f"  linear_qta8a_qga4w  algorithm={alg:11s} max |y - reference| = "
              f"{np.abs(y - ref).max():.3g}  ({dt * 1e3:.1f} ms, first call compiles)")
    y_float = x @ w.T
    print(f"  vs the float32 layer: relative error "
          f"{np.linalg.norm(y - y_float) / np.linalg.norm(y_float):.3f} (quantization)")
    sz = vq.offsets_to_scales_and_zeros(w_scales, vq.offsets_from_zero_points(w_scales,
                                                                              w_zeros))
    out_scale = np.full(t, np.abs(ref).max() / 127, np.float32)
    out_zp = np.zeros(t, np.int32)
    o8 = vq.linear_qta8a_qga4w_qta8o(x_q, x_scale, x_zp, w_packed, g, sz, out_scale, out_zp,
                                     device=dev)
    o8_ref = vq.linear_qta8a_qga4w_qta8o(x_q, x_scale, x_zp, w_packed, g, sz, out_scale,
                                         out_zp, algorithm="reference")
    print(f"  linear_qta8a_qga4w_qta8o (int8 out): {int((o8 == o8_ref).sum())}/{o8.size} "
          f"equal to the reference, max diff "
          f"{np.abs(o8.astype(int) - o8_ref).max()}")
    return 0


def cmd_conformance(args):
    from .conformance import run_suite
    from .device import Device
    dev = Device(args.device)
    print(f"conformance of vkqlinear on device {dev.index}: {dev.name} "
          f"({dev.info.driver_name} {dev.info.driver_info})", flush=True)
    rows = run_suite(dev, quick=args.quick, report=lambda line: print(line, flush=True),
                     defaults_only=args.defaults_only)
    print(f"\n{'algorithm':12s} {'variant':22s} {'passed':>8s} {'run':>5s} {'cases':>6s}  result")
    failed = False
    for alg, var, passed, run, total, note in rows:
        if run == 0:
            result = "NOT USED"
        elif passed == run == total:
            result = "PASS"
        else:
            result, failed = "FAIL", True
        print(f"{alg:12s} {var.name:22s} {passed:8d} {run:5d} {total:6d}  {result}"
              + (f"  ({note})" if note else ""))
    return 1 if failed else 0


def cmd_bench(args):
    from .measure.bench import main as bench_main
    return bench_main(args.rest)


def cmd_shader_stats(args):
    from .measure.shader_stats import main as stats_main
    return stats_main(args.rest)


def cmd_tune(args):
    from .measure.tuner import main as tune_main
    return tune_main(args.rest)


COMMANDS = {
    "info": (cmd_info, "list devices, limits and features",
             "Lists the Vulkan devices; for the device vkqlinear opens, its optional "
             "features, the kernel variants it runs (and any its self-check found wrong), "
             "the auto threshold and the tuned points.",
             [("", "every device; details of the default one"),
              ("--device 1", "details of device 1")]),
    "demo": (cmd_demo, "a small worked example of the ops",
             "Quantizes a small random layer, runs it through every algorithm and compares "
             "each answer with the CPU reference.",
             [("", "on the default device")]),
    "conformance": (cmd_conformance, "check the kernel variants against the contract",
                    "Runs the contract's named cases (shapes, group sizes, zero points, "
                    "int8 output, extreme values) through every kernel variant the device "
                    "runs and prints a table; exits 1 if a variant fails.",
                    [("--quick", "a quick subset of the cases"),
                     ("--quick --defaults-only", "only the variant each kernel uses by "
                                                 "default")]),
}
# subcommands with parsers of their own (vkqlinear.measure), loaded only when used
MEASURE = {"bench": (cmd_bench, "benchmark the kernels: GEMM against GEMV, rooflines"),
           "tune": (cmd_tune, "find the fastest kernels for this device"),
           "shader-stats": (cmd_shader_stats, "registers, spills and occupancy of every "
                                              "kernel as a GPU compiler makes it")}


def _parser():
    ap = argparse.ArgumentParser(**help_text(
        None, "vkqlinear: W4A8 linear layers (int8 activations, 4-bit group-quantized "
              "weights) as Vulkan compute shaders.",
        [("info", "the devices and what vkqlinear uses on them"),
         ("conformance --quick", "check every kernel variant of the default device"),
         ("bench --quick", "the quick benchmark"),
         ("bench --help", "a subcommand's own options")]))
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    for name, (fn, short, long, examples) in COMMANDS.items():
        p = sub.add_parser(name, help=short, **help_text(name, long, examples))
        p.add_argument("--device", type=int, default=None, help="device index (see info)")
        if name == "conformance":
            p.add_argument("--quick", action="store_true", help="a quick subset of cases")
            p.add_argument("--defaults-only", action="store_true",
                           help="only the variant each kernel uses by default on the device")
        p.set_defaults(fn=fn)
    for name, (fn, short) in MEASURE.items():
        p = sub.add_parser(name, help=f"{short} (see {name} --help)", add_help=False)
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(fn=fn)
    return ap


def main(argv=None):
    ap = _parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] and argv[0] in MEASURE:  # they have their own parsers
        args = argparse.Namespace(fn=MEASURE[argv[0]][0], rest=argv[1:])
    else:
        args = ap.parse_args(argv)
    from .errors import CompilerNotFoundError, VulkanUnavailableError
    try:
        return args.fn(args)
    except (VulkanUnavailableError, CompilerNotFoundError) as e:
        print(f"vkqlinear: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
