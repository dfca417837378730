"""The shader pipeline: cache hit and miss, corrupt entries, unsafe cache directories,
atomic writes, compile errors with defines, a missing glslangValidator."""

import os
import stat
import subprocess
import sys
import threading
import warnings

import pytest

from vkqlinear import compiler
from vkqlinear.errors import CompilerNotFoundError, ShaderCompileError

SHADER = """#version 450
#extension GL_GOOGLE_include_directive : require
#include "inc.glsl"
layout(local_size_x = 1) in;
layout(std430, binding = 0) buffer B { uint v[]; };
void main() { v[0] = VALUE + INC; }
"""


@pytest.fixture
def src(tmp_path):
    root = tmp_path / "src"
    root.mkdir()
    (root / "k.comp").write_text(SHADER)
    (root / "inc.glsl").write_text("const uint INC = 1u;\n")
    return root


@pytest.fixture
def cache(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("VKQLINEAR_CACHE_DIR", str(d))
    compiler.clear_memory_cache()
    yield d
    compiler.clear_memory_cache()


def _count_compiles(monkeypatch):
    calls = []
    real = compiler.run_glslang

    def spy(*a, **k):
        calls.append(a)
        return real(*a, **k)
    monkeypatch.setattr(compiler, "run_glslang", spy)
    return calls


def test_cache_hit_and_miss(src, cache, monkeypatch):
    calls = _count_compiles(monkeypatch)
    a = compiler.compile_shader("k.comp", {"VALUE": "2u"}, root=src)
    assert int.from_bytes(a[:4], "little") == compiler.SPIRV_MAGIC
    assert len(calls) == 1
    assert oct(cache.stat().st_mode & 0o777) == oct(0o700)
    compiler.clear_memory_cache()
    assert compiler.compile_shader("k.comp", {"VALUE": "2u"}, root=src) == a   # disk hit
    assert len(calls) == 1
    b = compiler.compile_shader("k.comp", {"VALUE": "3u"}, root=src)          # new define
    assert len(calls) == 2 and b != a
    (src / "inc.glsl").write_text("const uint INC = 5u;\n")                    # include edit
    c = compiler.compile_shader("k.comp", {"VALUE": "2u"}, root=src)
    assert len(calls) == 3 and c != a
    compiler.compile_shader("k.comp", {"VALUE": "2u"}, target_env="vulkan1.2", root=src)
    assert len(calls) == 4                                                      # new target
    assert len(list(cache.glob("*.spv"))) == 4
    assert not list(cache.glob("*.tmp"))


def _damage(path, how):
    """Damage one file of a cache entry the way a disk hiccup or a stray write would."""
    data = path.read_bytes()
    if how == "flip":
        b = bytearray(data)
        b[len(b) // 2] ^= 0xFF
        path.write_bytes(bytes(b))
    elif how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "non-utf8":
        path.write_bytes(b"\xff\xfe\x80" + data[3:])
    elif how == "binary-garbage":
        path.write_bytes(bytes(range(256)))
    elif how == "missing":
        path.unlink()
    elif how == "directory":        # not even a file
        path.unlink()
        path.mkdir()


DAMAGE = ["flip", "truncate", "empty", "non-utf8", "binary-garbage", "missing", "directory"]


@pytest.mark.parametrize("how", DAMAGE)
@pytest.mark.parametrize("which", ["spv", "sha256"])
def test_any_damage_to_any_file_of_an_entry_is_rebuilt(src, cache, monkeypatch, which, how):
    good = compiler.compile_shader("k.comp", {"VALUE": "2u"}, root=src)
    key = compiler.cache_key("k.comp", {"VALUE": "2u"}, root=src)
    path = cache / f"{key}.{which}"
    _damage(path, how)
    compiler.clear_memory_cache()
    calls = _count_compiles(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")     # a warning is allowed, an exception is not
        assert compiler.compile_shader("k.comp", {"VALUE": "2u"}, root=src) == good
        assert len(calls) == 1
        if how != "directory":              # rewritten in place
            assert (cache / f"{key}.spv").read_bytes() == good
        compiler.clear_memory_cache()
        assert compiler.compile_shader("k.comp", {"VALUE": "2u"}, root=src) == good


def test_valid_hash_of_invalid_spirv_is_rebuilt(src, cache, monkeypatch):
    import hashlib
    good = compiler.compile_shader("k.comp", {"VALUE": "2u"}, root=src)
    key = compiler.cache_key("k.comp", {"VALUE": "2u"}, root=src)
    junk = b"\0" * 64
    (cache / f"{key}.spv").write_bytes(junk)
    (cache / f"{key}.sha256").write_text(hashlib.sha256(junk).hexdigest())
    compiler.clear_memory_cache()
    calls = _count_compiles(monkeypatch)
    assert compiler.compile_shader("k.comp", {"VALUE": "2u"}, root=src) == good
    assert len(calls) == 1


def test_damaged_cache_entry_of_a_shipped_shader_still_gives_right_answers(
        tmp_path, monkeypatch, device):
    """A call through the public op after the checksum file of its kernel's entry got
    non-UTF-8 bytes: the entry is rebuilt and the answer is right."""
    import numpy as np

    import vkqlinear as vq
    monkeypatch.setenv("VKQLINEAR_CACHE_DIR", str(tmp_path / "c"))
    compiler.clear_memory_cache()
    rng = np.random.default_rng(0)
    x_q, xs, xz = vq.quantize_per_token(rng.standard_normal((2, 64)).astype(np.float32))
    wp, ws, wz = vq.quantize_weights(rng.standard_normal((8, 64)).astype(np.float32), 32)
    dev = vq.Device()
    want = vq.linear_qta8a_qga4w(x_q, xs, xz, wp, 32, ws, wz, algorithm="reference")
    vq.linear_qta8a_qga4w(x_q, xs, xz, wp, 32, ws, wz, algorithm="tiled", device=dev)
    for sha in (tmp_path / "c").glob("*.sha256"):
        _damage(sha, "non-utf8")
    dev.close()
    compiler.clear_memory_cache()
    with vq.Device() as dev:
        y = vq.linear_qta8a_qga4w(x_q, xs, xz, wp, 32, ws, wz, algorithm="tiled", device=dev)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
    compiler.clear_memory_cache()


def test_compile_error_shows_output_and_defines(src, cache):
    with pytest.raises(ShaderCompileError) as e:
        compiler.compile_shader("k.comp", {"VALUE": "undefined_name"}, root=src)
    msg = str(e.value)
    assert "-DVALUE=undefined_name" in msg and "undefined_name" in msg and "k.comp" in msg
    assert not list(cache.glob("*.spv"))


def test_missing_glslang(src, cache, monkeypatch):
    monkeypatch.setenv("PATH", str(src))  # nothing executable there
    compiler.clear_memory_cache()
    with pytest.raises(CompilerNotFoundError, match="apt-get install glslang-tools"):
        compiler.compile_shader("k.comp", {"VALUE": "1u"}, root=src)


def test_world_writable_cache_is_refused(src, tmp_path, monkeypatch):
    d = tmp_path / "open"
    d.mkdir()
    d.chmod(0o777)
    monkeypatch.setenv("VKQLINEAR_CACHE_DIR", str(d))
    compiler.clear_memory_cache()
    with pytest.warns(RuntimeWarning, match="world-writable"):
        data = compiler.compile_shader("k.comp", {"VALUE": "1u"}, root=src)
    assert data[:4] == compiler.SPIRV_MAGIC.to_bytes(4, "little")
    assert not list(d.iterdir())


def test_foreign_owned_cache_is_refused(src, tmp_path, monkeypatch):
    d = tmp_path / "foreign"
    d.mkdir(mode=0o700)
    monkeypatch.setenv("VKQLINEAR_CACHE_DIR", str(d))
    monkeypatch.setattr(os, "getuid", lambda: os.stat(d).st_uid + 1)
    compiler.clear_memory_cache()
    with pytest.warns(RuntimeWarning, match="another user"):
        compiler.compile_shader("k.comp", {"VALUE": "1u"}, root=src)
    assert not list(d.iterdir())


def test_unwritable_cache_falls_back(src, tmp_path, monkeypatch):
    f = tmp_path / "a-file"
    f.write_text("x")
    monkeypatch.setenv("VKQLINEAR_CACHE_DIR", str(f / "sub"))   # cannot be created
    compiler.clear_memory_cache()
    with pytest.warns(RuntimeWarning, match="unusable"):
        data = compiler.compile_shader("k.comp", {"VALUE": "1u"}, root=src)
    assert len(data) > 20


def test_concurrent_compiles_never_see_half_a_file(src, cache):
    """Several processes compile the same variant at once; every result is whole."""
    code = ("import sys; from vkqlinear import compiler; "
            f"d = compiler.compile_shader('k.comp', {{'VALUE': '7u'}}, root={str(src)!r}); "
            "sys.stdout.write(str(len(d)))")
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                              env=dict(os.environ)) for _ in range(4)]
    sizes = {p.communicate()[0] for p in procs}
    assert all(p.returncode == 0 for p in procs)
    assert len(sizes) == 1
    assert not list(cache.glob("*.tmp"))
    compiler.clear_memory_cache()
    results = []
    threads = [threading.Thread(target=lambda: results.append(
        compiler.compile_shader("k.comp", {"VALUE": "7u"}, root=src))) for _ in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert len(set(results)) == 1


def test_shipped_shaders_are_found():
    d = compiler.shader_dir()
    assert (d / "common.glsl").is_file() and (d / "gemm_tiled.comp").is_file()
    assert not (stat.S_IWOTH & d.stat().st_mode)


def test_every_shader_rounds_through_one_helper():
    """Round half to even lives in shaders/rounding.glsl: no shader calls GLSL's
    roundEven() (lavapipe mis-rounded ties with it in some code shapes), and the shaders
    that round include the helper."""
    import re

    from vkqlinear.compiler import shader_dir
    root = shader_dir()
    for path in sorted(root.glob("*.*")):
        code = "\n".join(line.split("//")[0] for line in path.read_text().splitlines())
        assert not re.search(r"\broundEven\s*\(", code), f"{path.name} calls roundEven()"
    for name in ("common.glsl", "quantize_tokens.comp"):
        assert '#include "rounding.glsl"' in (root / name).read_text()
