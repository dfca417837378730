"""The kernels as a GPU compiler sees them: ``python -m vkqlinear shader-stats``.

Every kernel configuration vkqlinear may run on a device (the untuned default of each
algorithm at each token count, the tuned entries, the tuner's candidates) is compiled
by the device's driver with pipeline statistics on (``VK_KHR_pipeline_executable_
properties``), and reported: registers, spills, occupancy, shared memory, instructions,
and from the assembly the main loop's instructions per 32 multiply-adds an invocation.

``--target FAMILY`` compiles on RADV's no-hardware device for an AMD GPU family
(``RADV_FORCE_FAMILY``; nothing runs, the compiler is AMD's ACO as shipped), with each
RADV found (``--icd``); ``--device N`` on a real device that reports statistics.
"""

from __future__ import annotations

import glob
import json
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from ..compiler import compile_shader
from ..kernels import (
    HALF_OFFSETS,
    HALF_SCALES,
    OFFSETS_FLOAT,
    OFFSETS_INTEGER,
    OFFSETS_NONE,
    SPECS,
    DeviceCaps,
    candidates,
    choose_kernel,
    kernel_config,
    kernel_from_config,
)

__all__ = ["FAMILIES", "FIELDS", "Compiler", "radv_icds", "target_compilers",
           "device_compiler", "configurations", "shader_stats", "loop_instructions",
           "spill_reasons", "main"]

# the AMD generations the checks cover: GCN5, RDNA2, RDNA3, RDNA4
FAMILIES = ("vega10", "navi21", "navi31", "gfx1201")
# other names an older RADV knows a family by (Mesa 22.3 calls navi31 gfx1100)
ALIASES = {"navi31": ("gfx1100",)}
FIELDS = ("family", "kernel", "role", "subgroup_size", "vgprs", "sgprs", "spilled_vgprs",
          "spilled_sgprs", "occupancy", "lds_bytes", "instructions",
          "loop_instructions_per_32_macs")
TOKENS = (1, 2, 4, 8, 16, 64, 512)
# the layer widths whose untuned kernels are checked (None: the layer's width unknown):
# a default may grow its tile where the grid is large
DEFAULT_WIDTHS = (None, 16384)
GROUP_SIZES = (32, 128)
# each driver's names for the statistics (RADV's; then Intel's ANV's, whose GRF count and
# spills are the analogues; a field a driver does not report stays None)
_STATS = {
    "vgprs": ("VGPRs", "GRF registers"),
    "sgprs": ("SGPRs",),
    "spilled_vgprs": ("Spilled VGPRs", "Spill Count"),
    "spilled_sgprs": ("Spilled SGPRs",),
    "occupancy": ("Subgroups per SIMD",),
    "lds_bytes": ("LDS size", "Workgroup Memory Size"),
    "instructions": ("Instructions", "Instruction Count"),
}


@dataclass(frozen=True)
class Compiler:
    """One way to reach a compiler: a Vulkan driver (its ICD file, ``None`` for the
    loader's default) and the environment that selects the device (``family`` for
    RADV's no-hardware device), and the device's index there."""
    label: str
    family: str | None = None
    icd: str | None = None
    index: int = 0
    force: str | None = None      # the name RADV_FORCE_FAMILY gets, if not ``family``

    def environ(self):
        env = dict(os.environ)
        if self.icd:
            env["VK_ICD_FILENAMES"] = env["VK_DRIVER_FILES"] = self.icd
            lib = _icd_library_dir(self.icd)
            if lib and not lib.startswith(("/usr/lib", "/lib")):
                env["LD_LIBRARY_PATH"] = lib + (":" + env["LD_LIBRARY_PATH"]
                                                if env.get("LD_LIBRARY_PATH") else "")
        if self.family:
            env["RADV_FORCE_FAMILY"] = self.force or self.family
        return env

    def _run(self, module, stdin=None):
        p = subprocess.run([sys.executable, "-m", module], input=stdin,
                           capture_output=True, text=True, env=self.environ(), timeout=3600)
        try:
            return json.loads(p.stdout)
        except json.JSONDecodeError:
            tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
            return {"error": f"{module} failed (exit {p.returncode}): {' '.join(tail)}"}

    def opened(self):
        """``(compiler, DeviceInfo)``: this compiler, or the same under an older name of
        its family (:data:`ALIASES`) where RADV knows only that one; ``ValueError`` if
        neither makes a device."""
        try:
            return self, self.device_info()
        except ValueError as first:
            for name in ALIASES.get(self.family, ()):
                other = replace(self, force=name)
                try:
                    return other, other.device_info()
                except ValueError:
                    pass
            raise first

    def device_info(self):
        """The :class:`~vkqlinear.DeviceInfo` of the device, or ``ValueError`` saying why
        there is none (an unknown family, no such driver)."""
        from ..device import DeviceInfo
        doc = self._run("vkqlinear._probe")
        devices = doc.get("devices") or []
        if self.index >= len(devices):
            raise ValueError(f"{self.label}: no device "
                             f"({doc.get('error') or 'the driver lists none'})")
        return DeviceInfo(**devices[self.index])

    def compile(self, jobs):
        """Statistics of each ``(spirv bytes, constants)`` job (the worker's results)."""
        with tempfile.TemporaryDirectory() as tmp:
            listed = []
            for i, (spirv, constants) in enumerate(jobs):
                path = Path(tmp) / f"{i}.spv"
                path.write_bytes(spirv)
                listed.append({"spirv": str(path), "constants": list(constants)})
            doc = self._run("vkqlinear.measure.pipeline_stats",
                            json.dumps({"device": self.index, "jobs": listed}))
        if "error" in doc:
            raise RuntimeError(f"{self.label}: {doc['error']}")
        return doc["results"]


def _icd_library_dir(icd):
    try:
        lib = json.loads(Path(icd).read_text())["ICD"]["library_path"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return str(Path(lib).parent) if os.path.isabs(lib) else None


def radv_icds():
    """The RADV drivers found: the system's and those unpacked into a checkout's
    ``.drivers/`` (``tools/mesa.sh``), as ICD file paths."""
    found = sorted(glob.glob("/usr/share/vulkan/icd.d/radeon_icd*.json") +
                   glob.glob("/etc/vulkan/icd.d/radeon_icd*.json"))
    here = Path(__file__).resolve().parents[2] / ".drivers"
    found += sorted(str(p) for p in here.glob("mesa-*/radeon_icd.json"))
    return found


def target_compilers(families=FAMILIES, icds=None):
    """A :class:`Compiler` per (RADV driver, family): RADV's no-hardware device."""
    return [Compiler(f"{f} ({Path(icd).parent.name if '.drivers' in icd else 'system'} "
                     f"RADV)", f, icd) for icd in (icds or radv_icds()) for f in families]


def device_compiler(index=None):
    """A :class:`Compiler` for a real device (``None``: the one vkqlinear opens)."""
    from ..device import devices, select_index
    i = select_index(index, devices())
    return Compiler(f"device {i}", None, None, i)


def caps_of(info):
    """The :class:`DeviceCaps` vkqlinear would run with on ``info``'s device: every
    optional feature it supports enabled, except those the device policy avoids."""
    from .. import policy
    return DeviceCaps.from_info(
        info, enabled=lambda f: info.supports(f) and not policy.avoided(info, f))


def configurations(info, tokens=TOKENS, group_sizes=GROUP_SIZES, outputs=(False, True),
                   roles=("default", "tuned", "candidate")):
    """``[(role, Kernel)]``: each configuration once, by its first role: the default of
    each algorithm at each point, the device's tuned entries, the tuner's candidates."""
    from .. import tuning
    caps = caps_of(info)
    seen, out = set(), []

    def add(role, k):      # equal Kernels are one pipeline (shader, defines, constants)
        if k not in seen:
            seen.add(k)
            out.append((role, k))
    points = [(t, g, o) for t in tokens for g in group_sizes for o in outputs]
    if "default" in roles:
        for t, g, o in points:
            for alg in (a for a in SPECS if caps.variants(a)):
                for n in DEFAULT_WIDTHS:
                    add("default", choose_kernel(alg, t, g, o, caps, n=n))
    if "tuned" in roles:
        for key, e in sorted(tuning.device_entries(info).items()):
            try:     # tuning.point_key: "KxN g32 float T8"
                _, g, kind, t = key.split()
                t, g = int(t[1:]), int(g[1:])
            except ValueError:
                continue
            k = kernel_from_config(e.get("config", {}), t, g, kind == "int8", caps)
            if k is not None:
                add("tuned", k)
    if "candidate" in roles:
        for t, g, o in points:
            for alg in SPECS:
                for k in candidates(alg, t, g, o, caps):
                    add("candidate", k)
    return out


# Two forms of RADV's final code: the disassembly ("BB3:", "s_cbranch_scc0 BB3",
# "v_add_u32 v1, ...") and, where its disassembler lacks the target, ACO's own print
# ("BB3", "s_cbranch_scc0 block:BB3", "v1: %8:v[1] = v_add_u32 ...")
_LABEL = re.compile(r"^\s*(BB\d+):?\s*$")
_BRANCH = re.compile(r"\bs_c?branch\w*\s+(?:block:)?(BB\d+)")
_RESULT = re.compile(r"^\s+(?:\S+:\s*%\S+,?\s*)+=\s*")
_INSTR = re.compile(r"^\s+([a-z][a-z0-9_]*)\b")
# not counted: waits and scheduling hints, and ACO's pseudo-instructions
_WAIT = re.compile(r"^s_(waitcnt|wait_|delay_alu|nop$)|^p_")


def _loops(assembly):
    """The backward branches of ``assembly`` as ``(first line, last line)`` ranges."""
    lines = assembly.splitlines()
    labels = {m.group(1): i for i, line in enumerate(lines) if (m := _LABEL.match(line))}
    return lines, [(labels[m.group(1)], i) for i, line in enumerate(lines)
                   if (m := _BRANCH.search(line)) and labels.get(m.group(1), i + 1) <= i]


def loop_instructions(assembly):
    """``(instructions, has_float_epilogue)`` of the innermost loop of ``assembly`` (the
    largest, where several loops hold no other), waits excluded; ``None`` if it has no
    loop."""
    lines, loops = _loops(assembly)
    inner = [(a, b) for a, b in loops
             if not any(a <= c and d <= b and (c, d) != (a, b) for c, d in loops)]
    if not inner:
        return None
    counted = []
    for a, b in inner:
        ops = [m.group(1) for line in lines[a:b + 1]
               if (m := _INSTR.match(_RESULT.sub("\t", line)))]
        counted.append([op for op in ops if not _WAIT.match(op)])
    ops = max(counted, key=len)
    return len(ops), any(op.startswith("v_cvt_f32_i32") for op in ops)


# The weights' offsets a pipeline is compiled for (HAS_OFFSET): float offsets are the
# heaviest case, and the default.
# (HAS_OFFSET, HALF_DATA) of each: float32 group data, or GGUF's forms with float16 d (q4_0)
# and m (q4_1).
OFFSET_KINDS = {"none": (OFFSETS_NONE, 0), "float": (OFFSETS_FLOAT, 0),
                "integer": (OFFSETS_INTEGER, 0), "q4_0": (OFFSETS_NONE, HALF_SCALES),
                "q4_1": (OFFSETS_FLOAT, HALF_SCALES | HALF_OFFSETS)}


def _job(kernel, offsets="float"):
    """A worker job: the kernel's SPIR-V and constants for weights with ``offsets`` (a key
    of :data:`OFFSET_KINDS`)."""
    return (compile_shader(kernel.shader, dict(kernel.defines)),
            kernel.pipeline_constants(*OFFSET_KINDS[offsets]))


def _stat(stats, field):
    """A report field from a driver's statistics (its own name for it), or ``None``."""
    return next((stats[n] for n in _STATS[field] if n in stats), None)


def _row(compiler, role, kernel, result, offsets="float"):
    row = {"family": compiler.family or compiler.label, "compiler": compiler.label,
           "kernel": kernel.describe(), "config": kernel_config(kernel),
           "group_size": kernel.group_size, "out_int8": kernel.out_int8,
           "has_offset": OFFSET_KINDS[offsets][0] != OFFSETS_NONE, "offsets": offsets,
           "role": role}
    if "error" in result:
        return dict(row, error=result["error"], **{f: None for f in FIELDS[3:]})
    exe = result["executables"][0]
    stats = exe["statistics"]
    for field in _STATS:
        row[field] = _stat(stats, field)
    row["subgroup_size"] = exe["subgroup_size"]
    row["loop_instructions_per_32_macs"] = None
    if exe.get("assembly"):
        found = loop_instructions(exe["assembly"])
        if found:
            n, epilogue = found
            macs = kernel.spec.loop_macs(kernel, epilogue)
            row["loop_instructions_per_32_macs"] = round(32 * n / macs, 2)
    return row


def shader_stats(compilers, tokens=TOKENS, group_sizes=GROUP_SIZES, outputs=(False, True),
                 roles=("default", "tuned", "candidate"), log=None, offsets=("float",)):
    """The report rows (:data:`FIELDS` and the configuration) of every configuration
    (:func:`configurations`) for weights with each of ``offsets`` (keys of
    :data:`OFFSET_KINDS`) on each compiler, in the compilers' order; a compiler whose
    device cannot be made (a family its RADV does not know) gives one row with
    ``error``. The compilers run side by side, one worker process each, a core each."""
    def one(c):
        try:
            c, info = c.opened()
        except ValueError as e:
            if log:
                log(f"{c.label}: skipped ({e})")
            return [{"family": c.family or c.label, "compiler": c.label, "error": str(e)}]
        configs = [(role, k, o) for role, k in configurations(info, tokens, group_sizes,
                                                              outputs, roles)
                   for o in offsets]
        jobs = [_job(k, o) for _, k, o in configs]
        if log:
            log(f"{c.label}: {info.name}, {info.driver_info}: {len(jobs)} pipelines")
        return [dict(_row(c, role, k, r, o), device=info.name, driver=info.driver_info)
                for (role, k, o), r in zip(configs, c.compile(jobs))]
    with ThreadPoolExecutor(max(1, min(len(compilers), os.cpu_count() or 1))) as pool:
        return [row for rows in pool.map(one, compilers) for row in rows]


def spill_reasons(index, kernels):
    """For each of ``kernels``, why it spills on device ``index`` (``"12 VGPRs, 0 SGPRs
    spilled"``), or ``""``; a configuration the driver cannot compile counts as
    spilling (it says why)."""
    out = []
    for r in device_compiler(index).compile([_job(k) for k in kernels]):
        if "error" in r:
            out.append(f"does not compile: {r['error']}")
            continue
        stats = r["executables"][0]["statistics"]
        v, sg = (_stat(stats, f) or 0 for f in ("spilled_vgprs", "spilled_sgprs"))
        out.append(f"{v} VGPRs, {sg} SGPRs spilled" if v or sg else "")
    return out


def spills(row):
    """Whether a report row's configuration spills registers."""
    return bool(row.get("spilled_vgprs") or row.get("spilled_sgprs"))


def _span(rows, field):
    """``"lo-hi"`` of a field over rows, ``"not reported"`` where the driver gives none."""
    values = [r[field] for r in rows if r.get(field) is not None]
    return f"{min(values)}-{max(values)}" if values else "not reported"


def summary(rows):
    """Lines for the terminal: per compiler, the defaults' worst figures, spilling
    configurations by role."""
    out = []
    for label in dict.fromkeys(r["compiler"] for r in rows):
        mine = [r for r in rows if r["compiler"] == label]
        if len(mine) == 1 and "error" in mine[0] and "kernel" not in mine[0]:
            out.append(f"{label}: {mine[0]['error']}")
            continue
        bad = [r for r in mine if "error" in r]
        out.append(f"{label}: {mine[0].get('device')} ({mine[0].get('driver')}), "
                   f"{len(mine)} configurations" + (f", {len(bad)} failed to compile"
                                                    if bad else ""))
        for role in ("default", "tuned", "candidate"):
            rs = [r for r in mine if r.get("role") == role and "error" not in r]
            if rs:
                sp = [r for r in rs if spills(r)]
                out.append(f"  {role:9s} {len(rs):5d}: spilling {len(sp)}, VGPRs "
                           f"{_span(rs, 'vgprs')}, occupancy {_span(rs, 'occupancy')}")
                for r in sp[:5] if role == "default" else ():
                    out.append(f"    spills: {r['kernel']} out_int8={r['out_int8']} "
                               f"({r['spilled_vgprs']} VGPRs, {r['spilled_sgprs']} SGPRs)")
    return out


DESCRIPTION = (
    "Compiles every kernel configuration vkqlinear may run on a device (the untuned "
    "defaults at each token count, the tuned entries, the tuner's candidates) with the "
    "driver's pipeline statistics on, and reports registers, spills, occupancy, shared "
    "memory, instructions and the main loop's instructions per 32 multiply-adds. "
    "--target compiles for AMD GPU families on RADV's no-hardware device (nothing runs), "
    "with every RADV found: the system's and one unpacked by tools/mesa.sh, or those "
    "given by --icd. Exits 1 if a default configuration spills.")
EXAMPLES = [("--target navi31", "RDNA3, as AMD's compiler in Mesa sees it"),
            ("--target vega10,navi21,navi31,gfx1201 --json stats.json",
             "four AMD generations, the rows as JSON"),
            ("--target navi21 --icd /opt/mesa/share/vulkan/icd.d/radeon_icd.x86_64.json",
             "with another RADV build"),
            ("--device 0 --tokens 1,64", "a real GPU that reports pipeline statistics")]


def _parser():
    from .._cli import parser
    from .common import int_list, output_list
    ap = parser("shader-stats", DESCRIPTION, EXAMPLES)
    where = ap.add_mutually_exclusive_group()
    where.add_argument("--device", type=int, help="device index (see info)")
    where.add_argument("--target", type=lambda s: [f for f in s.split(",") if f],
                       help=f"AMD GPU families for RADV's no-hardware device "
                            f"(default {','.join(FAMILIES)})")
    ap.add_argument("--icd", type=lambda s: [f for f in s.split(",") if f],
                    help="RADV ICD files to compile with (default: every RADV found)")
    ap.add_argument("--tokens", type=int_list,
                    help=f"token counts (default {','.join(map(str, TOKENS))})")
    ap.add_argument("--group-sizes", type=int_list,
                    help=f"group sizes (default {','.join(map(str, GROUP_SIZES))})")
    ap.add_argument("--outputs", type=output_list, default=["float", "int8"],
                    help="output kinds: float, int8 or float,int8 (default both)")
    ap.add_argument("--offsets", default="float",
                    help="the weights' offsets: none (symmetric), float, integer (zero "
                         "points), q4_0 / q4_1 (GGUF's, float16 group data), "
                         "comma-separated (default float, the heaviest)")
    ap.add_argument("--roles", default="default,tuned,candidate",
                    help="which configurations: default, tuned, candidate (default all)")
    ap.add_argument("--json", help="write the rows here")
    return ap


def main(argv=None):
    ap = _parser()
    a = ap.parse_args(argv)
    roles = tuple(r.strip() for r in a.roles.split(",") if r.strip())
    if not roles or set(roles) - {"default", "tuned", "candidate"}:
        ap.error(f"--roles: expected default, tuned or candidate, got {a.roles!r}")
    offsets = tuple(o.strip() for o in a.offsets.split(",") if o.strip())
    if not offsets or set(offsets) - set(OFFSET_KINDS):
        ap.error(f"--offsets: expected {', '.join(OFFSET_KINDS)}, got {a.offsets!r}")
    if a.device is not None:
        compilers = [device_compiler(a.device)]
    else:
        icds = a.icd or radv_icds()
        if not icds:
            ap.error("no RADV driver found: install Debian's mesa-vulkan-drivers, or give "
                     "--icd")
        compilers = target_compilers(a.target or FAMILIES, icds)
    try:
        rows = shader_stats(compilers, a.tokens or TOKENS, a.group_sizes or GROUP_SIZES,
                            tuple(o == "int8" for o in a.outputs), roles,
                            log=lambda m: print(m, file=sys.stderr, flush=True),
                            offsets=offsets)
    except RuntimeError as e:        # the device reports no statistics, its driver died
        print(f"{ap.prog}: {e}", file=sys.stderr)
        return 2
    for line in summary(rows):
        print(line)
    if a.json:
        from .common import provenance
        Path(a.json).write_text(json.dumps({**provenance(), "rows": rows}, indent=1))
        print(f"JSON: {a.json}")
    failed = any("error" in r and "kernel" in r for r in rows)
    return 1 if failed or any(spills(r) for r in rows if r.get("role") == "default") else 0


if __name__ == "__main__":
    sys.exit(main())
