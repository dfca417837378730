"""Vulkan devices: listing, opening, and the capability report.

* :func:`devices` lists every physical device with the properties and limits that matter
  to the kernels. It runs :mod:`vkqlinear._probe` in a subprocess once per process, so a
  crashing driver cannot take the caller down, and caches the answer.
* :class:`Device` opens one through Kompute (``kp.Manager``). Which one: the explicit
  ``index``, else ``$VKQLINEAR_DEVICE``, else the best GPU (discrete, integrated,
  virtual), else the CPU device (lavapipe).
* ``$VKQLINEAR_VARIANT`` (read when a device opens) forces a kernel code shape on it, e.g.
  ``portable`` or ``subgroup+int64`` (:class:`~vkqlinear.kernels.Variant`).
* :meth:`Device.capabilities` says, per optional feature, whether the device *supports* it
  and whether it is *enabled* on the device Kompute created. Stock Kompute enables none;
  the kp that ``tools/setup.sh`` builds enables the supported ones and reports them
  (``Manager.enabled_features``). A kernel variant may use a feature only where enabled.

Thread safety: a :class:`Device` serialises everything it submits with one lock
(``device.lock``); objects made on it may be used from several threads.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import warnings
import weakref
from dataclasses import dataclass, field, replace

import numpy as np

from . import policy, selfcheck, tuning
from .errors import (
    INSTALL_HINT,
    DeviceClosedError,
    DeviceMemoryError,
    VulkanUnavailableError,
    user_stacklevel,
)
from .kernels import DeviceCaps, Variant

__all__ = ["DeviceInfo", "Device", "devices", "default_device", "FEATURES"]

# Optional features the kernel variants may use: name -> what it gives.
FEATURES = {
    "storageBuffer8BitAccess": "8-bit storage (int8 loads/stores in storage buffers)",
    "shaderInt8": "int8 arithmetic in shaders",
    "shaderIntegerDotProduct": "integer dot product (OpSDot, 4x8-bit packed)",
    "shaderInt64": "64-bit integers (64-bit loads: half the load instructions)",
    "subgroupArithmetic": "subgroup arithmetic (subgroupAdd) in compute shaders",
    "texelBufferLoads": "loads through uniform texel buffers (vector loads on lavapipe)",
}
# Texel-buffer loads bind X, W and the group data as uniform texel buffers of 16-byte
# texels. They are offered only where a texel buffer can hold every buffer a storage
# buffer can (maxTexelBufferElements * 16 >= maxStorageBufferRange), so no layer needs a
# size-dependent fallback, and only with the kp that tools/setup.sh builds (its patch adds
# texel-buffer bindings to kp.Algorithm).
TEXEL_BYTES = 16
R32G32B32A32_UINT = 107          # VkFormat of those texels

_TYPE_RANK = {"discrete-gpu": 0, "integrated-gpu": 1, "virtual-gpu": 2, "other": 3, "cpu": 4}


@dataclass(frozen=True)
class DeviceInfo:
    """One physical device as the probe saw it (see ``python -m vkqlinear info``)."""
    index: int
    name: str
    type: str
    vendor_id: int
    device_id: int
    api_version: str
    driver_version: int
    driver_name: str
    driver_info: str
    limits: dict
    memory_heaps: list
    subgroup: dict
    features: dict
    extensions: list = field(repr=False)
    properties: dict = field(default_factory=dict, repr=False)  # e.g. dot acceleration
    device_local_heaps: list = field(default_factory=list, repr=False)  # per heap

    @property
    def memory_budget(self):
        """Bytes the library may hold on the device: its largest device-local heap."""
        local = [size for size, is_local in zip(self.memory_heaps, self.device_local_heaps)
                 if is_local]
        return max(local or self.memory_heaps or [0])

    @property
    def is_lavapipe(self):
        return self.driver_name == "llvmpipe" or self.name.startswith("llvmpipe")

    def supports(self, feature):
        if feature == "texelBufferLoads":
            lim = self.limits
            return (int(lim.get("max_texel_buffer_elements", 0)) * TEXEL_BYTES
                    >= int(lim["max_storage_buffer_range"]))
        if feature == "subgroupArithmetic":
            sg = self.subgroup
            return bool(sg.get("compute")) and "arithmetic" in sg.get("operations", [])
        return bool(self.features.get(feature))


_probe_lock = threading.Lock()
_probe_cache = None


def _run_probe():
    try:
        proc = subprocess.run([sys.executable, "-m", "vkqlinear._probe"], capture_output=True,
                              text=True, timeout=120)
    except subprocess.TimeoutExpired:
        raise VulkanUnavailableError("the Vulkan device probe did not finish in 120 s") from None
    try:
        doc = json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise VulkanUnavailableError(
            f"the Vulkan device probe failed (exit code {proc.returncode}): "
            f"{proc.stderr.strip()[-2000:]}\n{INSTALL_HINT}") from None
    if "error" in doc:
        raise VulkanUnavailableError(f"no usable Vulkan loader or driver: {doc['error']}. "
                                     f"{INSTALL_HINT}")
    if not doc["devices"]:
        raise VulkanUnavailableError(f"Vulkan found no physical device. {INSTALL_HINT}")
    return [DeviceInfo(**d) for d in doc["devices"]]


def devices(refresh=False):
    """All Vulkan physical devices, as :class:`DeviceInfo`, in Vulkan's order.

    Raises :class:`VulkanUnavailableError` (with how to install) if there are none.
    """
    global _probe_cache
    with _probe_lock:
        if _probe_cache is None or refresh:
            _probe_cache = _run_probe()
        return list(_probe_cache)


def select_index(index, infos):
    if index is None:
        env = os.environ.get("VKQLINEAR_DEVICE", "").strip()
        if env:
            try:
                index = int(env)
            except ValueError:
                raise ValueError(f"VKQLINEAR_DEVICE: expected a device index, got {env!r}") \
                    from None
    if index is None:
        return min(infos, key=lambda d: (_TYPE_RANK.get(d.type, 3), d.index)).index
    if isinstance(index, bool) or not isinstance(index, int):
        raise TypeError(f"index: expected an int, got {type(index).__name__}")
    if not 0 <= index < len(infos):
        raise ValueError(f"index: expected a device index in [0, {len(infos) - 1}], got {index}")
    return index


def _import_kp():
    try:
        import kp
    except ImportError as e:
        raise VulkanUnavailableError(
            f"cannot import kp (Kompute): {e}. Run tools/setup.sh, which builds and installs "
            "it (PyPI has only an sdist that cannot build offline).") from None
    return kp


# Vulkan flag values for kp.OpMemoryBarrier (the patched kp binds it)
ACCESS_SHADER_READ, ACCESS_SHADER_WRITE, ACCESS_TRANSFER_WRITE = 0x20, 0x40, 0x1000
ACCESS_HOST_READ = 0x2000
STAGE_COMPUTE_SHADER, STAGE_TRANSFER, STAGE_HOST = 0x800, 0x1000, 0x4000

WAITS = ("auto", "block", "yield")
# The items of tools/kp-0.9.0-vkqlinear.patch that vkqlinear asks for by name (the patched
# kp reports the last item it has as kp.vkqlinear_patch; tools/README.md lists them)
KP_PATCH_ITEMS = {
    "eval_io": 8,           # Sequence.eval_io(..., yield_ns): one call uploads, runs, reads
    "storage_copy": 9,      # storage tensors can be copied into
    "shared_pipeline": 10,  # algorithms share one pipeline
}
# Vulkan errors that mean "out of memory", as Kompute's exceptions name them
_OUT_OF_MEMORY = ("outofdevicememory", "outofhostmemory", "out of memory",
                  "outofpoolmemory", "toomanyobjects")
MAX_BINDING_ENV = "VKQLINEAR_MAX_BINDING_BYTES"


def binding_limit(info, environ=os.environ):
    """The largest buffer one binding may hold: the device's ``maxStorageBufferRange``, or
    ``$VKQLINEAR_MAX_BINDING_BYTES`` where that is smaller (read when a device opens; layers
    larger than the limit are split)."""
    limit = int(info.limits["max_storage_buffer_range"])
    env = environ.get(MAX_BINDING_ENV, "").strip()
    if env:
        try:
            value = int(env)
        except ValueError:
            value = 0
        if value < 4096:
            raise ValueError(f"{MAX_BINDING_ENV}: expected a byte count of at least 4096, "
                             f"got {env!r}")
        limit = min(limit, value)
    return limit


# How long a call on a "yield" device polls before it blocks: long enough for a decode
# step's kernels, short enough not to take a core from the device's worker threads.
YIELD_NS = 2_000_000


def kp_has(kp, item):
    """Whether the ``kp`` module has the patch's item ``item`` (a key of
    :data:`KP_PATCH_ITEMS`)."""
    return getattr(kp, "vkqlinear_patch", 0) >= KP_PATCH_ITEMS[item]


# Pipelines a device keeps compiled without a recorded call using them (Device.algorithm)
PIPELINE_TEMPLATES = 64


class Pipeline:
    """A kp algorithm as :meth:`Device.algorithm` made it (``algo``), and whether it shares
    a template's pipeline (``shared``). Kept by the recorded call that binds it."""
    __slots__ = ("algo", "shared", "__weakref__")

    def __init__(self, algo):
        self.algo = algo
        shares = getattr(algo, "shares_pipeline", None)
        self.shared = bool(shares()) if shares else False


class Device:
    """An open Vulkan device (a Kompute manager) and the library's caches on it.

    ``Device()`` picks the default (see the module doc); ``Device(i)`` opens device ``i``
    of :func:`devices`. Use as a context manager or call :meth:`close`; afterwards every
    use of the device, or of weights and layers made on it, raises
    :class:`~vkqlinear.errors.DeviceClosedError`.

    ``wait`` is how a call waits for the device (settable later through :attr:`wait`):

    * ``"block"``: sleeps in ``vkWaitForFences`` until the device signals;
    * ``"yield"``: polls the fence, yielding the thread between polls, for up to
      :data:`YIELD_NS` (2 ms), then sleeps as ``"block"``. On a CPU device (lavapipe)
      the driver's worker threads occupy the cores while the work runs; the polling
      thread keeps its core from going idle, so a short call's result is picked up
      without a wake-up from an idle core, which costs tens of microseconds on a
      virtual machine (docs/design.md). On a GPU it
      would keep a core busy for nothing;
    * ``"auto"`` (default): what the tuner measured faster on this device
      (:mod:`vkqlinear.measure.tuner`), else ``"yield"`` on a CPU device, ``"block"`` on any
      other.

    ``"yield"`` needs the kp that ``tools/setup.sh`` builds; with any other kp a call
    blocks, and :attr:`wait` says so.
    """

    def __init__(self, index=None, *, wait="auto"):
        infos = devices()
        self.index = select_index(index, infos)
        self.info = infos[self.index]
        kp = _import_kp()
        try:
            self._mgr = kp.Manager(self.index)
        except RuntimeError as e:
            raise VulkanUnavailableError(f"Kompute could not open device {self.index} "
                                         f"({self.info.name}): {e}") from None
        get = getattr(self._mgr, "enabled_features", None)
        texel = hasattr(getattr(kp, "Algorithm", None), "set_next_texel_formats")  # patched kp
        self.enabled_features = frozenset((get() if get else ())) | (
            {"texelBufferLoads"} if texel else set())
        self._kp_yields = kp_has(kp, "eval_io")
        self._kp_storage = kp_has(kp, "storage_copy")
        self._kp_shares = kp_has(kp, "shared_pipeline")
        self._templates = {}  # (shader, constants, bindings) -> kp algorithm, oldest first
        self._placeholder = None
        self.wait = wait
        self.lock = threading.RLock()
        self.closed = False
        self._memory = 0                 # bytes of the buffers the library holds here
        self._memory_lock = threading.Lock()
        try:                # the settings from the environment, each refused by name
            #: the largest buffer one binding holds (``$VKQLINEAR_MAX_BINDING_BYTES``)
            self.max_binding = binding_limit(self.info)
            #: the :class:`~vkqlinear.policy.Quirk` s of this device's driver
            self.quirks = tuple(policy.quirks(self.info))
            self._self_check = selfcheck.enabled()
        except ValueError:
            self._mgr.destroy()
            raise
        self.caps = DeviceCaps.from_info(self.info, self.enabled)
        #: the self-check verdicts known here: {"tiled/int64": (ok, detail)}
        self.verdicts = {}
        self._check_lock = threading.RLock()
        if self._self_check:             # verdicts of earlier processes on this driver
            for key, v in tuning.self_checks(self.info).items():
                self._record_verdict(key, bool(v["ok"]), str(v.get("detail", "")), False)
        env = os.environ.get("VKQLINEAR_VARIANT", "").strip()
        try:
            #: the code shape every kernel on this device uses unless a call names one
            self.forced_variant = Variant.parse(env) if env else None
        except ValueError as e:
            self._mgr.destroy()
            raise ValueError(f"VKQLINEAR_VARIANT: {e}") from None

    # -- self-check ----------------------------------------------------------------------
    def verify(self, kernel):
        """Whether ``kernel``'s variant answers right on this device: its self-check
        (:mod:`vkqlinear.selfcheck`), run now with ``kernel`` if this driver never ran it.
        A wrong variant is dropped from :attr:`caps` (with one warning)."""
        if not self._self_check:
            return True
        key = selfcheck.variant_key(kernel.algorithm, kernel.variant)
        hooked = key in selfcheck.forced_wrong()
        verdict = self.verdicts.get(key)
        if verdict is None or (hooked and verdict[0]):
            with self._check_lock:
                verdict = self.verdicts.get(key)
                if verdict is None or (hooked and verdict[0]):
                    ok, detail, _ = selfcheck.run_check(self, kernel)
                    if not selfcheck.forced_wrong():     # the test hook's verdicts stay here
                        tuning.store_self_check(self.info, key, {"ok": ok, "detail": detail})
                    self._record_verdict(key, ok, detail, True)
                    verdict = self.verdicts[key]
        return verdict[0]

    def _record_verdict(self, key, ok, detail, warn):
        self.verdicts[key] = (ok, detail)
        if ok:
            return
        algorithm, name = key.split("/", 1)
        try:
            variant = Variant.parse(name)
        except ValueError:
            return
        self.caps = replace(self.caps, excluded=self.caps.excluded | {(algorithm, variant)})
        if warn:
            warnings.warn(f"vkqlinear: the {algorithm} kernel's variant {name!r} answered "
                          f"wrong in its self-check on {self.name} ({self.info.driver_name} "
                          f"{self.info.driver_info}): {detail}. It is not used on this "
                          "device.", RuntimeWarning, stacklevel=user_stacklevel())

    def wrong_variants(self):
        """``{"tiled/texel+int64": detail}``: the variants this device's self-check found
        wrong (they are not used)."""
        return {k: v[1] for k, v in self.verdicts.items() if not v[0]}

    def tuning_state(self):
        """:func:`vkqlinear.tuning.state` of this device: a token that changes when its
        tuned entries may have (the file looked at no more than
        :data:`~vkqlinear.tuning.RECHECK_S` apart, and at once after this process wrote
        it)."""
        return tuning.state(self.info)

    @property
    def timestamp_period_s(self):
        """Seconds per tick of this device's timestamps."""
        return self.info.limits["timestamp_period_ns"] * 1e-9

    @property
    def wait(self):
        """How calls wait for this device: ``"block"`` or ``"yield"`` (see the class doc);
        set it to ``"auto"``, ``"block"`` or ``"yield"``."""
        return "yield" if self.yield_ns else "block"

    @property
    def builtin_wait(self):
        """What ``"auto"`` means before the tuner has measured: ``"yield"`` on a CPU
        device, ``"block"`` on any other."""
        return policy.builtin_wait(self.info)

    @property
    def wait_setting(self):
        """The mode :attr:`wait` was last set to, ``"auto"`` included (``"auto"`` is
        resolved again when the tuner stores a new measurement)."""
        return self._wait_setting

    @wait.setter
    def wait(self, mode):
        if not isinstance(mode, str):
            raise TypeError(f"wait: expected one of {', '.join(WAITS)}, "
                            f"got {type(mode).__name__}")
        if mode not in WAITS:
            raise ValueError(f"wait: expected one of {', '.join(WAITS)}, got {mode!r}")
        self._wait_setting = mode
        if mode == "auto":           # the tuner's measurement, else by the device's kind
            mode = tuning.tuned_wait(self.info) or self.builtin_wait
        # read by every call: how long it polls before it blocks
        self.yield_ns = YIELD_NS if mode == "yield" and self._kp_yields else 0

    # -- description -------------------------------------------------------------------
    @property
    def name(self):
        return self.info.name

    def enabled(self, feature):
        """Whether a shader may use ``feature`` on this device (see :data:`FEATURES`)."""
        if self.avoided(feature):
            return False
        if feature == "subgroupArithmetic":   # core in Vulkan 1.1: nothing to enable
            return self.info.supports(feature)
        return feature in self.enabled_features and self.info.supports(feature)

    def avoided(self, feature):
        """Why vkqlinear does not use ``feature`` on this device's driver (a known driver
        fault, :mod:`vkqlinear.policy`), or ``None``."""
        return next((q.why for q in self.quirks if q.feature == feature), None)

    def capabilities(self):
        """``{feature: {"supported": bool, "enabled": bool, "what": str, "avoided": why or
        None}}`` plus the subgroup size."""
        caps = {f: {"supported": self.info.supports(f), "enabled": self.enabled(f),
                    "what": what, "avoided": self.avoided(f)} for f, what in FEATURES.items()}
        caps["subgroupSize"] = self.info.subgroup.get("size", 0)
        return caps

    @property
    def manager(self):
        self.check_open()
        return self._mgr

    def check_open(self):
        if self.closed:
            raise DeviceClosedError(f"device: {self.info.name} (index {self.index}) is closed")

    # -- memory ------------------------------------------------------------------------
    def check_binding(self, nbytes, name):
        """Refuse a buffer of ``nbytes`` that one binding of this device cannot hold."""
        lim = self.max_binding
        if nbytes > lim:
            src = (f"{MAX_BINDING_ENV}={lim}" if lim < self.info.limits["max_storage_buffer_range"]
                   else f"this device's maxStorageBufferRange of {lim} bytes")
            raise ValueError(f"{name}: needs a {nbytes}-byte storage buffer, more than "
                             f"{src}")

    @property
    def memory_budget(self):
        """Bytes the library may hold on this device (its largest device-local heap)."""
        return self.info.memory_budget

    def memory_used(self):
        """Bytes of the device buffers the library holds on this device: resident weights
        (one copy each) and the tensors of recorded calls (a device buffer and its host
        staging buffer each)."""
        return self._memory

    def _release(self, nbytes):
        with self._memory_lock:
            if not self.closed:
                self._memory -= nbytes

    def _allocate(self, make, nbytes, what):
        """``make()`` (a kp tensor) counted against the budget; a refused or failed
        allocation is a :class:`~vkqlinear.errors.DeviceMemoryError`."""
        with self._memory_lock:
            used = self._memory
            if used + nbytes > self.memory_budget:
                raise DeviceMemoryError(
                    f"{what}: needs {nbytes} bytes on {self.name}, where vkqlinear holds "
                    f"{used} of its {self.memory_budget} bytes (Device.memory_used()); drop "
                    "layers it no longer needs (their QuantizedWeights) or use another device")
            self._memory += nbytes
        try:
            tensor = make()
        except (RuntimeError, MemoryError) as e:
            self._release(nbytes)
            if isinstance(e, MemoryError) or any(m in str(e).lower() for m in _OUT_OF_MEMORY):
                raise DeviceMemoryError(f"{what}: allocating {nbytes} bytes on {self.name} "
                                        f"failed ({e}); vkqlinear holds {used} bytes there "
                                        "(Device.memory_used())") from None
            raise
        weakref.finalize(tensor, self._release, nbytes)
        return tensor

    @property
    def unified_memory(self):
        """Whether all of the device's memory is device-local (lavapipe, most integrated
        GPUs): host-visible buffers are then as fast for the kernels as any, and a staging
        copy would only double the memory."""
        heaps = self.info.device_local_heaps
        return bool(heaps) and all(heaps)

    def tensors(self, arrays, what):
        """Device tensors (with host staging buffers) initialised from ``arrays``; not yet
        copied to the device (a recorded call's sequence does that)."""
        with self.lock:
            mgr = self.manager
            return [self._allocate(lambda a=a: mgr.tensor_t(np.ascontiguousarray(a)),
                                   2 * a.nbytes, what) for a in arrays]

    def io_tensors(self, arrays, what):
        """Tensors for a recorded call's inputs and outputs, initialised from ``arrays``:
        host-visible buffers the kernels read and write directly on a device with unified
        memory, else device buffers with host staging buffers (:meth:`tensors`)."""
        if not self.unified_memory:
            return self.tensors(arrays, what)
        import kp
        with self.lock:
            mgr = self.manager
            return [self._allocate(lambda a=a: mgr.tensor_t(np.ascontiguousarray(a),
                                                            kp.TensorTypes.host),
                                   a.nbytes, what) for a in arrays]

    def algorithm(self, tensors, spirv, workgroup, spec, push, texel_formats=None):
        """A :class:`Pipeline` (a kp algorithm binding ``tensors``; ``texel_formats``: the
        tensors' texel formats, 0 for a storage buffer) that shares its pipeline where kp
        can (patch item 10): a kernel's pipeline is compiled once a process, not for every
        recorded call (tens of milliseconds to a second each on lavapipe: a new token
        count in a model's prefill, every layer of a test suite). The pipelines live in
        templates, algorithms bound to placeholder tensors, of which the device keeps the
        :data:`PIPELINE_TEMPLATES` most recently used; keep the returned object."""
        key = (spirv, bytes(np.asarray(spec, np.uint32)), np.asarray(push).nbytes, len(tensors),
               tuple(bool(f) for f in texel_formats or ()))
        with self.lock:
            source = self._template(key, spirv, spec, push, texel_formats) \
                if self._kp_shares else None
            return Pipeline(self._make_algorithm(tensors, spirv, workgroup, spec, push,
                                                 texel_formats, source))

    def _make_algorithm(self, tensors, spirv, workgroup, spec, push, texel_formats, source):
        import kp
        if texel_formats is not None:
            kp.Algorithm.set_next_texel_formats(list(texel_formats))
        if source is not None:
            kp.Algorithm.set_next_pipeline_source(source)
        try:
            return self.manager.algorithm(tensors, spirv, workgroup, spec, push)
        finally:              # consumed by the algorithm, unless it was never made
            if texel_formats is not None:
                kp.Algorithm.set_next_texel_formats([])
            if source is not None:
                kp.Algorithm.set_next_pipeline_source(None)

    def _template(self, key, spirv, spec, push, texel_formats):
        """The kp algorithm holding the pipeline of ``key``, made (and the pipeline
        compiled) on first use; the least recently used ones go past
        :data:`PIPELINE_TEMPLATES`."""
        template = self._templates.pop(key, None)
        if template is None:
            if self._placeholder is None:    # one 16-byte buffer (a texel) for every binding
                self._placeholder = self.manager.tensor_t(np.zeros(4, np.uint32))
            template = self._make_algorithm([self._placeholder] * key[3], spirv, (1, 1, 1),
                                            spec, push, texel_formats, None)
        self._templates[key] = template               # now the most recently used
        while len(self._templates) > PIPELINE_TEMPLATES:
            self._templates.pop(next(iter(self._templates)))
        return template

    def upload(self, arrays, what):
        """Device tensors holding ``arrays``, copied to the device now, for data that stays
        (weights): device memory only, filled from temporary host-visible tensors (with the
        kp that tools/setup.sh builds; with another kp they keep a staging copy)."""
        import kp
        with self.lock:
            mgr = self.manager
            if not self._kp_storage:
                tensors = self.tensors(arrays, what)
                mgr.sequence().eval(kp.OpTensorSyncDevice(tensors))
                return tensors
            arrays = [np.ascontiguousarray(a) for a in arrays]
            resident = [self._allocate(
                lambda a=a: mgr.tensor_t(a, kp.TensorTypes.storage), a.nbytes, what)
                for a in arrays]
            staging = [self._allocate(lambda a=a: mgr.tensor_t(a, kp.TensorTypes.host),
                                      a.nbytes, what) for a in arrays]
            seq = mgr.sequence()
            for src, dst in zip(staging, resident):
                seq.record(kp.OpTensorCopy([src, dst]))
            # the copies' writes are visible to the kernels of every later submission
            seq.record(kp.OpMemoryBarrier(resident, ACCESS_TRANSFER_WRITE, ACCESS_SHADER_READ,
                                          STAGE_TRANSFER, STAGE_COMPUTE_SHADER))
            seq.eval()
            del seq, staging
        return resident

    # -- lifetime ----------------------------------------------------------------------

    def close(self):
        """Release every buffer, pipeline and sequence made on this device, then the device."""
        with self.lock:
            if self.closed:
                return
            self.closed = True
            mgr, self._mgr = self._mgr, None
            self._templates.clear()
            self._placeholder = None
            mgr.destroy()
            with self._memory_lock:
                self._memory = 0
        global _default
        with _default_lock:
            if _default is self:
                _default = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        state = "closed" if self.closed else "open"
        return f"<vkqlinear.Device {self.index}: {self.info.name} ({self.info.type}), {state}>"


_default = None
_default_lock = threading.Lock()


def default_device():
    """The process-wide default :class:`Device`, opened on first use."""
    global _default
    with _default_lock:
        if _default is None or _default.closed:
            _default = Device()
        return _default


def check_device(device):
    """``device`` as an argument: a :class:`Device` or ``None``, else ``TypeError``."""
    if device is not None and not isinstance(device, Device):
        raise TypeError(f"device: expected a vkqlinear.Device or None, "
                        f"got {type(device).__name__}")
    return device


def resolve(device):
    """``device`` argument of the ops: ``None`` (default device) or a :class:`Device`."""
    if check_device(device) is None:
        return default_device()
    device.check_open()
    return device
