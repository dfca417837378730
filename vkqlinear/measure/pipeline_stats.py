"""Compiles compute pipelines on a Vulkan device and reads back what its compiler made of
them (``VK_KHR_pipeline_executable_properties``): registers, spills, occupancy, shared
memory, instruction counts and, where the driver gives it, the assembly.

Runs as ``python -m vkqlinear.measure.pipeline_stats``, a worker process: a JSON document
``{"device": index, "jobs": [{"spirv": path, "constants": [uint, ...]}, ...]}`` on stdin,
one JSON document ``{"device": {...}, "results": [...]}`` on stdout. A process of its own
because the device may be another driver than the caller's (RADV's no-hardware device,
chosen by the environment), and a driver that crashes takes only the worker with it. No
memory is allocated: a no-hardware device has none. Uses PyPI's ``vulkan`` bindings,
since Kompute creates pipelines only through tensors.
"""

from __future__ import annotations

import json
import sys

from .spirv import descriptor_bindings, has_push_constants

EXTENSION = "VK_KHR_pipeline_executable_properties"
# Optional features the kernels' variants use, enabled where the device has them
_OPTIONAL_EXTENSIONS = ("VK_KHR_8bit_storage", "VK_KHR_shader_float16_int8",
                        "VK_KHR_shader_integer_dot_product", "VK_KHR_storage_buffer_storage_class")


def _raw(vk, device, name):
    """A device function as its raw cffi pointer (the bindings' wrappers of the
    two-call pattern leave the output structs' sType unset and cannot size the
    assembly's text)."""
    fn = vk.lib.vkGetDeviceProcAddr(device, name.encode())
    if fn == vk.ffi.NULL:
        raise RuntimeError(f"the device has no {name}")
    return vk.ffi.cast(f"PFN_{name}", fn)


def _two_call(vk, fn, device, info, ctype, stype):
    """The results of a ``vkGetPipelineExecutable*KHR`` function: count, then fill."""
    info = vk.ffi.addressof(info)
    count = vk.ffi.new("uint32_t*")
    if fn(device, info, count, vk.ffi.NULL) != vk.VK_SUCCESS:
        raise RuntimeError(f"{ctype}: the count query failed")
    out = vk.ffi.new(f"{ctype}[]", count[0])
    for item in out:
        item.sType = stype
    if fn(device, info, count, out) != vk.VK_SUCCESS:
        raise RuntimeError(f"{ctype}: the query failed")
    return out


def _text(vk, x):
    """A fixed char array of a Vulkan struct as str (the bindings convert some already)."""
    return x if isinstance(x, str) else vk.ffi.string(x).decode(errors="replace")


def _statistic(vk, s):
    value = s.value
    fmt = int(s.format)
    if fmt == vk.VK_PIPELINE_EXECUTABLE_STATISTIC_FORMAT_BOOL32_KHR:
        return bool(value.b32)
    if fmt == vk.VK_PIPELINE_EXECUTABLE_STATISTIC_FORMAT_INT64_KHR:
        return int(value.i64)
    if fmt == vk.VK_PIPELINE_EXECUTABLE_STATISTIC_FORMAT_UINT64_KHR:
        return int(value.u64)
    return float(value.f64)


class StatsDevice:
    """A logical device on physical device ``index`` with pipeline statistics on, and
    every optional feature the kernels may use that it has."""

    def __init__(self, index=0):
        import vulkan as vk
        self.vk = vk
        app = vk.VkApplicationInfo(pApplicationName="vkqlinear-shader-stats",
                                   apiVersion=vk.VK_MAKE_VERSION(1, 1, 0))
        self.instance = vk.vkCreateInstance(vk.VkInstanceCreateInfo(pApplicationInfo=app),
                                            None)
        pds = vk.vkEnumeratePhysicalDevices(self.instance)
        if not 0 <= index < len(pds):
            raise ValueError(f"device: expected an index below {len(pds)}, got {index}")
        self.physical = pds[index]
        exts = {_text(vk, e.extensionName)
                for e in vk.vkEnumerateDeviceExtensionProperties(self.physical, None)}
        if EXTENSION not in exts:
            raise RuntimeError(f"the device does not report pipeline statistics ({EXTENSION})")
        props = vk.vkGetPhysicalDeviceProperties(self.physical)
        self.name = _text(vk, props.deviceName)
        self.max_push_constants = int(props.limits.maxPushConstantsSize)
        self.device = self._create_device(vk, [EXTENSION] + [e for e in _OPTIONAL_EXTENSIONS
                                                             if e in exts])
        self._props = _raw(vk, self.device, "vkGetPipelineExecutablePropertiesKHR")
        self._stats = _raw(vk, self.device, "vkGetPipelineExecutableStatisticsKHR")
        self._ir = _raw(vk, self.device, "vkGetPipelineExecutableInternalRepresentationsKHR")

    def _create_device(self, vk, extensions):
        # every feature the device has, from a query of the same chain
        kinds = [vk.VkPhysicalDevicePipelineExecutablePropertiesFeaturesKHR]
        if "VK_KHR_8bit_storage" in extensions:
            kinds.append(vk.VkPhysicalDevice8BitStorageFeatures)
        if "VK_KHR_shader_float16_int8" in extensions:
            kinds.append(vk.VkPhysicalDeviceShaderFloat16Int8Features)
        if "VK_KHR_shader_integer_dot_product" in extensions:
            kinds.append(vk.VkPhysicalDeviceShaderIntegerDotProductFeatures)
        chain, head = [], vk.ffi.NULL
        for kind in kinds:                  # each links to the last; the list keeps them
            head = kind(pNext=head)
            chain.append(head)
        f2 = vk.VkPhysicalDeviceFeatures2(pNext=head)
        vk.vkGetPhysicalDeviceFeatures2(self.physical, f2)
        families = vk.vkGetPhysicalDeviceQueueFamilyProperties(self.physical)
        family = next(i for i, q in enumerate(families) if q.queueFlags & vk.VK_QUEUE_COMPUTE_BIT)
        queue = vk.VkDeviceQueueCreateInfo(queueFamilyIndex=family, queueCount=1,
                                           pQueuePriorities=[1.0])
        info = vk.VkDeviceCreateInfo(pNext=f2, queueCreateInfoCount=1,
                                     pQueueCreateInfos=[queue],
                                     enabledExtensionCount=len(extensions),
                                     ppEnabledExtensionNames=extensions)
        return vk.vkCreateDevice(self.physical, info, None)

    def stats(self, spirv, constants):
        """``{"executables": [{"name", "subgroup_size", "statistics": {name: value},
        "assembly": text or None}]}`` of a compute pipeline of ``spirv`` (bytes) with
        specialization constants ``constants`` (uint32, constant ids 0, 1, ...)."""
        vk, dev = self.vk, self.device
        made = []
        try:
            module = vk.vkCreateShaderModule(
                dev, vk.VkShaderModuleCreateInfo(codeSize=len(spirv), pCode=spirv), None)
            made.append((vk.vkDestroyShaderModule, module))
            bindings = [vk.VkDescriptorSetLayoutBinding(
                binding=b, descriptorType=t, descriptorCount=1,
                stageFlags=vk.VK_SHADER_STAGE_COMPUTE_BIT)
                for b, t in descriptor_bindings(spirv).items()]
            dsl = vk.vkCreateDescriptorSetLayout(dev, vk.VkDescriptorSetLayoutCreateInfo(
                bindingCount=len(bindings), pBindings=bindings), None)
            made.append((vk.vkDestroyDescriptorSetLayout, dsl))
            ranges = [vk.VkPushConstantRange(stageFlags=vk.VK_SHADER_STAGE_COMPUTE_BIT,
                                             offset=0, size=self.max_push_constants)] \
                if has_push_constants(spirv) else []
            layout = vk.vkCreatePipelineLayout(dev, vk.VkPipelineLayoutCreateInfo(
                setLayoutCount=1, pSetLayouts=[dsl], pushConstantRangeCount=len(ranges),
                pPushConstantRanges=ranges or None), None)
            made.append((vk.vkDestroyPipelineLayout, layout))
            pipeline = self._pipeline(module, layout, constants)
            made.append((vk.vkDestroyPipeline, pipeline))
            return {"executables": self._executables(pipeline)}
        finally:
            for destroy, handle in reversed(made):
                destroy(dev, handle, None)

    def _pipeline(self, module, layout, constants):
        vk = self.vk
        entries = [vk.VkSpecializationMapEntry(constantID=i, offset=4 * i, size=4)
                   for i in range(len(constants))]
        data = vk.ffi.new("uint32_t[]", [int(c) for c in constants] or [0])
        spec = vk.VkSpecializationInfo(mapEntryCount=len(entries), pMapEntries=entries or None,
                                       dataSize=4 * len(constants), pData=data)
        stage = vk.VkPipelineShaderStageCreateInfo(
            stage=vk.VK_SHADER_STAGE_COMPUTE_BIT, module=module, pName="main",
            pSpecializationInfo=spec)
        flags = vk.VK_PIPELINE_CREATE_CAPTURE_STATISTICS_BIT_KHR | \
            vk.VK_PIPELINE_CREATE_CAPTURE_INTERNAL_REPRESENTATIONS_BIT_KHR
        info = vk.VkComputePipelineCreateInfo(flags=flags, stage=stage, layout=layout)
        return vk.vkCreateComputePipelines(self.device, None, 1, [info], None)[0]

    def _executables(self, pipeline):
        vk, dev = self.vk, self.device
        pinfo = vk.VkPipelineInfoKHR(pipeline=pipeline)
        out = []
        props = _two_call(vk, self._props, dev, pinfo, "VkPipelineExecutablePropertiesKHR",
                          vk.VK_STRUCTURE_TYPE_PIPELINE_EXECUTABLE_PROPERTIES_KHR)
        for i, p in enumerate(props):
            einfo = vk.VkPipelineExecutableInfoKHR(pipeline=pipeline, executableIndex=i)
            stats = _two_call(vk, self._stats, dev, einfo, "VkPipelineExecutableStatisticKHR",
                              vk.VK_STRUCTURE_TYPE_PIPELINE_EXECUTABLE_STATISTIC_KHR)
            out.append({"name": _text(vk, p.name), "subgroup_size": int(p.subgroupSize),
                        "statistics": {_text(vk, st.name): _statistic(vk, st)
                                       for st in stats},
                        "assembly": self._assembly(einfo)})
        return out

    def _assembly(self, einfo):
        """The executable's final representation (the assembly), or ``None``."""
        vk, dev = self.vk, self.device
        reps = _two_call(vk, self._ir, dev, einfo,
                         "VkPipelineExecutableInternalRepresentationKHR",
                         vk.VK_STRUCTURE_TYPE_PIPELINE_EXECUTABLE_INTERNAL_REPRESENTATION_KHR)
        if not len(reps):
            return None
        keep = [vk.ffi.new("char[]", int(r.dataSize)) for r in reps]
        for r, buf in zip(reps, keep):
            r.pData = buf
        count = vk.ffi.new("uint32_t*", len(reps))
        if self._ir(dev, vk.ffi.addressof(einfo), count, reps) not in (vk.VK_SUCCESS,
                                                                     vk.VK_INCOMPLETE):
            return None
        texts = {_text(vk, r.name): _text(vk, buf) for r, buf in zip(reps, keep) if r.isText}
        # the last is the final code; RADV names it "Assembly"
        return texts.get("Assembly") or (list(texts.values())[-1] if texts else None)

    def close(self):
        self.vk.vkDestroyDevice(self.device, None)
        self.vk.vkDestroyInstance(self.instance, None)


def main():
    request = json.load(sys.stdin)
    try:
        compiler = StatsDevice(int(request.get("device") or 0))
    except Exception as e:    # no such device, no statistics, no loader: say so, as JSON
        json.dump({"error": f"{type(e).__name__}: {e}"}, sys.stdout)
        return 0
    results = []
    for job in request["jobs"]:
        with open(job["spirv"], "rb") as f:
            spirv = f.read()
        try:
            results.append(compiler.stats(spirv, job["constants"]))
        except Exception as e:
            results.append({"error": f"{type(e).__name__}: {e}"})
    json.dump({"device": {"name": compiler.name}, "results": results}, sys.stdout)
    compiler.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
