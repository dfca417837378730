"""The little of a SPIR-V module's interface that creating its pipeline without Kompute
needs: its descriptor bindings and their kinds (``descriptor_bindings``), and whether it
has push constants. Reads the module's words; no tool needed.
"""

from __future__ import annotations

import struct

__all__ = ["descriptor_bindings", "has_push_constants", "STORAGE_BUFFER",
           "UNIFORM_TEXEL_BUFFER", "STORAGE_TEXEL_BUFFER", "UNIFORM_BUFFER"]

# VkDescriptorType values
UNIFORM_TEXEL_BUFFER, STORAGE_TEXEL_BUFFER, UNIFORM_BUFFER, STORAGE_BUFFER = 4, 5, 6, 7

_MAGIC = 0x07230203
_OP_TYPE_IMAGE, _OP_TYPE_SAMPLED_IMAGE, _OP_TYPE_POINTER = 25, 27, 32
_OP_VARIABLE, _OP_DECORATE = 59, 71
_DEC_BLOCK, _DEC_BUFFER_BLOCK, _DEC_BINDING, _DEC_SET = 2, 3, 33, 34
_SC_UNIFORM_CONSTANT, _SC_UNIFORM, _SC_PUSH_CONSTANT, _SC_STORAGE_BUFFER = 0, 2, 9, 12
_DIM_BUFFER = 5


def _instructions(spirv):
    words = struct.unpack(f"<{len(spirv) // 4}I", spirv[:len(spirv) // 4 * 4])
    if len(words) < 5 or words[0] != _MAGIC:
        raise ValueError("spirv: not a little-endian SPIR-V module")
    i = 5
    while i < len(words):
        count, op = words[i] >> 16, words[i] & 0xFFFF
        if count == 0:
            raise ValueError(f"spirv: malformed instruction at word {i}")
        yield op, words[i + 1:i + count]
        i += count


def _parse(spirv):
    types, pointers, variables, decorations = {}, {}, [], {}
    for op, args in _instructions(spirv):
        if op == _OP_DECORATE:
            decorations.setdefault(args[0], {})[args[1]] = args[2] if len(args) > 2 else True
        elif op in (_OP_TYPE_IMAGE, _OP_TYPE_SAMPLED_IMAGE):
            types[args[0]] = (op, args[1:])
        elif op == _OP_TYPE_POINTER:
            pointers[args[0]] = (args[1], args[2])        # storage class, pointee
        elif op == _OP_VARIABLE:
            variables.append((args[0], args[1], args[2]))  # pointer type, id, class
    return types, pointers, variables, decorations


def _kind(pointee, storage_class, types, decorations):
    if storage_class == _SC_STORAGE_BUFFER:
        return STORAGE_BUFFER
    if storage_class == _SC_UNIFORM:
        return STORAGE_BUFFER if _DEC_BUFFER_BLOCK in decorations.get(pointee, {}) \
            else UNIFORM_BUFFER
    op, args = types.get(pointee, (None, ()))
    if op == _OP_TYPE_SAMPLED_IMAGE:
        op, args = types.get(args[0], (None, ()))
        if op == _OP_TYPE_IMAGE and args[1] == _DIM_BUFFER:
            return UNIFORM_TEXEL_BUFFER
    elif op == _OP_TYPE_IMAGE and args[1] == _DIM_BUFFER and args[5] == 2:
        return STORAGE_TEXEL_BUFFER
    raise ValueError(f"spirv: a binding of a kind vkqlinear does not bind (storage class "
                     f"{storage_class}, type op {op})")


def descriptor_bindings(spirv):
    """``{binding: VkDescriptorType}`` of descriptor set 0 (several variables may alias a
    binding: one entry)."""
    types, pointers, variables, decorations = _parse(spirv)
    out = {}
    for ptype, var, storage_class in variables:
        dec = decorations.get(var, {})
        if _DEC_BINDING not in dec or dec.get(_DEC_SET, 0) != 0:
            continue
        _, pointee = pointers[ptype]
        out[dec[_DEC_BINDING]] = _kind(pointee, storage_class, types, decorations)
    return dict(sorted(out.items()))


def has_push_constants(spirv):
    """Whether the module declares a push-constant block."""
    return any(sc == _SC_PUSH_CONSTANT for _, _, sc in _parse(spirv)[2])
