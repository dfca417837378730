"""GLSL to SPIR-V: ``glslangValidator`` in a subprocess, with an on-disk cache.

A variant is a shader file of ``shaders/`` plus ``-D`` defines. Its cache key hashes the
source *and every file it includes*, the defines, the target environment and the compiler's
version, so a change to any of them compiles anew.

The cache holds code that runs on the device, so it is treated like code:

* location: ``$VKQLINEAR_CACHE_DIR``, else ``$XDG_CACHE_HOME/vkqlinear/spirv``, else
  ``~/.cache/vkqlinear/spirv``; created with mode 0700;
* a directory that is world-writable or owned by another user is not used (a warning
  says why) and compilation happens in memory only; so is an unwritable one;
* each entry ``<key>.spv`` has a ``<key>.sha256`` beside it; an entry whose content does
  not match its hash, or is not SPIR-V, is discarded and rebuilt;
* writes go to a temporary file in the same directory and are renamed into place, so a
  concurrent reader never sees half a file.

Compilation runs in a per-call temporary directory. A non-zero exit, or any ``ERROR`` in
the compiler's output, raises :class:`~vkqlinear.errors.ShaderCompileError` with the output
and the variant's defines.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

from .errors import CompilerNotFoundError, ShaderCompileError

__all__ = ["shader_dir", "compile_shader", "cache_dir", "compiler_version",
           "DEFAULT_TARGET_ENV"]

# Kompute 0.9 creates a Vulkan 1.1 instance: SPIR-V 1.3 at most.
DEFAULT_TARGET_ENV = "vulkan1.1"
SPIRV_MAGIC = 0x07230203
_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)
_memo = {}
_memo_lock = threading.Lock()
_version_cache = {}
INSTALL_GLSLANG = ("glslangValidator was not found on PATH. Install it with "
                   "'apt-get install glslang-tools' (Debian/Ubuntu) or from the Vulkan SDK, "
                   "or run tools/setup.sh.")


def shader_dir():
    """The GLSL sources: ``vkqlinear/shaders`` when installed, ``shaders/`` in a checkout."""
    here = Path(__file__).resolve().parent
    for cand in (here / "shaders", here.parent / "shaders"):
        if (cand / "common.glsl").is_file():
            return cand
    raise FileNotFoundError(f"vkqlinear shaders not found next to {here}")


def _glslang():
    exe = shutil.which("glslangValidator")
    if exe is None:
        raise CompilerNotFoundError(INSTALL_GLSLANG)
    return exe


def compiler_version():
    exe = _glslang()
    if exe not in _version_cache:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60)
        _version_cache[exe] = out.stdout.strip()
    return _version_cache[exe]


def _sources(name, root):
    """``[(relative name, text)]`` of a shader and, recursively, its includes."""
    seen, order, todo = set(), [], [name]
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        seen.add(n)
        path = root / n
        if not path.is_file():
            raise FileNotFoundError(f"shader source {n!r} not found in {root}")
        text = path.read_text()
        order.append((n, text))
        todo.extend(_INCLUDE.findall(text))
    return sorted(order)


def _define_args(defines):
    return [f"-D{k}" if v is None else f"-D{k}={v}" for k, v in sorted(defines.items())]


def cache_key(name, defines, target_env=DEFAULT_TARGET_ENV, root=None):
    root = Path(root) if root else shader_dir()
    h = hashlib.sha256()
    for n, text in _sources(name, root):
        h.update(f"file {n}\n".encode())
        h.update(text.encode())
    h.update(repr(_define_args(defines)).encode())
    h.update(target_env.encode())
    h.update(compiler_version().encode())
    return h.hexdigest()


def cache_dir():
    """The cache directory if it is safe and writable, else ``None`` (with a warning)."""
    env = os.environ.get("VKQLINEAR_CACHE_DIR")
    if env:
        d = Path(env)
    else:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"),
                                                                ".cache")
        d = Path(base) / "vkqlinear" / "spirv"
    try:
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = d.stat()
    except OSError as e:
        warnings.warn(f"vkqlinear: shader cache {d} unusable ({e}); compiling in memory",
                      RuntimeWarning, stacklevel=3)
        return None
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        warnings.warn(f"vkqlinear: shader cache {d} belongs to another user (uid {st.st_uid});"
                      " not used. Set VKQLINEAR_CACHE_DIR to a directory of your own.",
                      RuntimeWarning, stacklevel=3)
        return None
    if st.st_mode & stat.S_IWOTH:
        warnings.warn(f"vkqlinear: shader cache {d} is world-writable; not used. "
                      "Set VKQLINEAR_CACHE_DIR to a private directory.",
                      RuntimeWarning, stacklevel=3)
        return None
    if not os.access(d, os.W_OK | os.X_OK):
        warnings.warn(f"vkqlinear: shader cache {d} is not writable; compiling in memory",
                      RuntimeWarning, stacklevel=3)
        return None
    return d


def _valid_spirv(data):
    return len(data) >= 20 and len(data) % 4 == 0 and \
        int.from_bytes(data[:4], "little") == SPIRV_MAGIC


def _read_entry(d, key):
    """The cached SPIR-V for ``key``, or ``None`` (a miss) when the entry is missing or any
    of its files is damaged in any way (then it is removed, to be rebuilt)."""
    spv, sha = d / f"{key}.spv", d / f"{key}.sha256"
    try:
        data = spv.read_bytes()
        want = sha.read_bytes().strip()
    except OSError:
        return None
    if hashlib.sha256(data).hexdigest().encode() != want or not _valid_spirv(data):
        for p in (spv, sha):
            try:
                p.unlink()
            except OSError:
                pass
        return None
    return data


def _atomic_write(path, data):
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _write_entry(d, key, data):
    try:
        # The hash first: a reader that finds the .spv finds a matching .sha256.
        _atomic_write(d / f"{key}.sha256", (hashlib.sha256(data).hexdigest() + "\n").encode())
        _atomic_write(d / f"{key}.spv", data)
    except OSError as e:
        warnings.warn(f"vkqlinear: could not write shader cache entry in {d}: {e}",
                      RuntimeWarning, stacklevel=3)


def run_glslang(name, defines, target_env, root):
    exe = _glslang()
    with tempfile.TemporaryDirectory(prefix="vkqlinear-glslang-") as tmp:
        out = Path(tmp) / "out.spv"
        cmd = [exe, "-V", "--target-env", target_env, f"-I{root}", *_define_args(defines),
               "-S", "comp", "-o", str(out), str(root / name)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        log = (proc.stdout + proc.stderr).strip()
        if proc.returncode != 0 or "ERROR" in log or not out.is_file():
            raise ShaderCompileError(
                f"glslangValidator failed on {name} (exit code {proc.returncode}) with defines "
                f"{_define_args(defines)} for {target_env}:\n{log}")
        return out.read_bytes()


def compile_shader(name, defines=None, target_env=DEFAULT_TARGET_ENV, root=None,
                   use_cache=True):
    """SPIR-V bytes of ``shaders/<name>`` compiled with ``defines`` (``{NAME: value}``)."""
    defines = dict(defines or {})
    root = Path(root) if root else shader_dir()
    key = cache_key(name, defines, target_env, root)
    with _memo_lock:
        if use_cache and key in _memo:
            return _memo[key]
    d = cache_dir() if use_cache else None
    data = _read_entry(d, key) if d is not None else None
    if data is None:
        data = run_glslang(name, defines, target_env, root)
        if d is not None:
            _write_entry(d, key, data)
    with _memo_lock:
        _memo[key] = data
    return data


def clear_memory_cache():
    """Forget the in-process copies and the compiler's version (the on-disk cache is
    untouched): the next compile looks for ``glslangValidator`` again."""
    with _memo_lock:
        _memo.clear()
        _version_cache.clear()
