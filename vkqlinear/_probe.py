"""Reads every Vulkan physical device's properties and optional features.

Run as ``python -m vkqlinear._probe``: it prints one JSON document and exits. The library
runs it in a subprocess (see :func:`vkqlinear.device.devices`) so that a broken driver or
loader can fail that process, never the caller's. Uses PyPI's ``vulkan`` (cffi) bindings,
since Kompute exposes neither subgroup properties, features nor the timestamp period.
"""

from __future__ import annotations

import json
import sys

_TYPES = {0: "other", 1: "integrated-gpu", 2: "discrete-gpu", 3: "virtual-gpu", 4: "cpu"}
_SUBGROUP_OPS = {0x1: "basic", 0x2: "vote", 0x4: "arithmetic", 0x8: "ballot",
                 0x10: "shuffle", 0x20: "shuffle_relative", 0x40: "clustered", 0x80: "quad"}


def _version(v):
    return f"{v >> 22}.{(v >> 12) & 0x3FF}.{v & 0xFFF}"


def probe():
    """Every physical device as a JSON-ready dict (the fields of ``DeviceInfo``)."""
    import vulkan as vk

    app = vk.VkApplicationInfo(pApplicationName="vkqlinear-probe",
                               apiVersion=vk.VK_MAKE_VERSION(1, 1, 0))
    inst = vk.vkCreateInstance(vk.VkInstanceCreateInfo(pApplicationInfo=app), None)
    try:
        return [_device(vk, index, pd)
                for index, pd in enumerate(vk.vkEnumeratePhysicalDevices(inst))]
    finally:
        vk.vkDestroyInstance(inst, None)


def _device(vk, index, pd):
    s = vk.ffi.string
    exts = sorted(e.extensionName if isinstance(e.extensionName, str)
                  else s(e.extensionName).decode()
                  for e in vk.vkEnumerateDeviceExtensionProperties(pd, None))
    has = set(exts).__contains__
    p2, sg, dotp, drv, sizes = _properties(vk, pd, has)
    p = p2.properties     # a view into p2: valid while p2 is referenced, here
    mem = vk.vkGetPhysicalDeviceMemoryProperties(pd)
    qfs = vk.vkGetPhysicalDeviceQueueFamilyProperties(pd)
    compute_q = [q for q in qfs if q.queueFlags & vk.VK_QUEUE_COMPUTE_BIT]
    ops = int(sg.supportedOperations)
    return {
        "index": index,
        "name": s(p.deviceName).decode(),
        "type": _TYPES.get(int(p.deviceType), "other"),
        "vendor_id": int(p.vendorID),
        "device_id": int(p.deviceID),
        "api_version": _version(int(p.apiVersion)),
        "driver_version": int(p.driverVersion),
        "driver_name": s(drv.driverName).decode() if drv is not None else "",
        "driver_info": s(drv.driverInfo).decode() if drv is not None else "",
        "limits": _limits(p.limits, compute_q),
        "memory_heaps": [int(mem.memoryHeaps[i].size) for i in range(mem.memoryHeapCount)],
        "device_local_heaps": [bool(mem.memoryHeaps[i].flags &
                                    vk.VK_MEMORY_HEAP_DEVICE_LOCAL_BIT)
                               for i in range(mem.memoryHeapCount)],
        "subgroup": {
            "size": int(sg.subgroupSize),
            # the sizes a pipeline may run at (subgroup size control; 0: not reported)
            "min_size": int(sizes.minSubgroupSize) if sizes is not None else 0,
            "max_size": int(sizes.maxSubgroupSize) if sizes is not None else 0,
            "compute": bool(sg.supportedStages & vk.VK_SHADER_STAGE_COMPUTE_BIT),
            "operations": [n for b, n in _SUBGROUP_OPS.items() if ops & b],
        },
        "features": _features(vk, pd, has),
        "extensions": exts,
        "properties": {
            "integer_dot_4x8_packed_accelerated": bool(
                dotp and dotp.integerDotProduct4x8BitPackedSignedAccelerated),
        },
    }


def _properties(vk, pd, has):
    """``(properties2, subgroup, integer dot product or None, driver or None, subgroup
    size control or None)``, chaining
    only the structs the device knows (core in 1.2 or an exposed extension). The caller
    keeps ``properties2`` while it reads its nested ``properties``: a nested struct is a
    view into its parent's memory, freed with the parent."""
    api = vk.vkGetPhysicalDeviceProperties(pd).apiVersion
    sg = vk.VkPhysicalDeviceSubgroupProperties()
    head, dotp, drv, sizes = sg, None, None, None
    if api >= vk.VK_MAKE_VERSION(1, 3, 0) or has("VK_EXT_subgroup_size_control"):
        sizes = head = vk.VkPhysicalDeviceSubgroupSizeControlProperties(pNext=head)
    if has("VK_KHR_shader_integer_dot_product"):
        dotp = head = vk.VkPhysicalDeviceShaderIntegerDotProductProperties(pNext=head)
    if api >= vk.VK_MAKE_VERSION(1, 2, 0) or has("VK_KHR_driver_properties"):
        drv = head = vk.VkPhysicalDeviceDriverProperties(pNext=head)
    p2 = vk.VkPhysicalDeviceProperties2(pNext=head)
    vk.vkGetPhysicalDeviceProperties2(pd, p2)
    return p2, sg, dotp, drv, sizes


def _features(vk, pd, has):
    f8 = fi8 = fdot = None
    head = vk.ffi.NULL
    if has("VK_KHR_8bit_storage"):
        f8 = head = vk.VkPhysicalDevice8BitStorageFeatures(pNext=head)
    if has("VK_KHR_shader_float16_int8"):
        fi8 = head = vk.VkPhysicalDeviceShaderFloat16Int8Features(pNext=head)
    if has("VK_KHR_shader_integer_dot_product"):
        fdot = head = vk.VkPhysicalDeviceShaderIntegerDotProductFeatures(pNext=head)
    f2 = vk.VkPhysicalDeviceFeatures2(pNext=head)
    vk.vkGetPhysicalDeviceFeatures2(pd, f2)
    return {
        "storageBuffer8BitAccess": bool(f8 and f8.storageBuffer8BitAccess),
        "shaderInt8": bool(fi8 and fi8.shaderInt8),
        "shaderIntegerDotProduct": bool(fdot and fdot.shaderIntegerDotProduct),
        "shaderInt64": bool(f2.features.shaderInt64),
    }


def _limits(lim, compute_q):
    return {
        "max_workgroup_size": [int(lim.maxComputeWorkGroupSize[i]) for i in range(3)],
        "max_workgroup_count": [int(lim.maxComputeWorkGroupCount[i]) for i in range(3)],
        "max_workgroup_invocations": int(lim.maxComputeWorkGroupInvocations),
        "max_shared_memory": int(lim.maxComputeSharedMemorySize),
        "max_storage_buffer_range": int(lim.maxStorageBufferRange),
        "max_texel_buffer_elements": int(lim.maxTexelBufferElements),
        "max_push_constants_size": int(lim.maxPushConstantsSize),
        "timestamp_period_ns": float(lim.timestampPeriod),
        "timestamp_compute_and_graphics": bool(lim.timestampComputeAndGraphics),
        "timestamp_valid_bits": int(compute_q[0].timestampValidBits) if compute_q else 0,
    }


def main():
    try:
        result = {"devices": probe()}
    except ImportError as e:
        result = {"error": f"cannot load the Vulkan loader or bindings: {e}"}
    except Exception as e:  # a Vulkan error: no ICD, no device, ...
        result = {"error": f"{type(e).__name__}: {e}"}
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
