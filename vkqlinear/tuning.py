"""The tuning file: what the tuner (``python -m vkqlinear tune``, :mod:`vkqlinear.measure.tuner`)
measured on a device, read back by the kernel choice.

Location: ``$VKQLINEAR_TUNING_FILE``, else ``$XDG_CACHE_HOME/vkqlinear/tuning.json``, else
``~/.cache/vkqlinear/tuning.json``. The file is versioned (:data:`VERSION`)::

    {"version": 2, "devices": {"<device name> | <driver name> <driver version>": {
        "kernel_generation": 4,                    # kernels.KERNEL_GENERATION
        "auto_threshold": 0,                       # optional: bench --tune's crossover
        "self_check": {"tiled/int64": {"ok": true, "detail": "exact"}},   # selfcheck.py
        "configs": {"4096x4096 g32 float T1": {"config": {...}, "kernel_s": ..., ...}}}}}

A config (:func:`vkqlinear.kernels.kernel_config`) is the fastest kernel the tuner found
for a layer shape, group size, output kind and token bucket (T rounded up to a power of
two). Entries of another kernel generation are ignored. Writes take a lock file beside it
and replace the file atomically, so two tuners at once leave a valid file with both their
entries; an unreadable, malformed or foreign file is ignored with a warning, and the next
write moves it aside (``<name>.broken``) before writing a new one.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import tempfile
import threading
import time
import warnings
from pathlib import Path

from . import policy
from .kernels import DEFAULT_AUTO_THRESHOLD, KERNEL_GENERATION

__all__ = ["tuning_file", "device_key", "point_key", "token_bucket", "auto_threshold",
           "store_threshold", "store_configs", "tuned_config", "device_entries", "state",
           "tuned_wait", "store_wait", "self_checks", "store_self_check",
           "BUILTIN_THRESHOLDS", "RECHECK_S", "VERSION"]

VERSION = 2
BUILTIN_THRESHOLDS = policy.AUTO_THRESHOLDS     # the device policy's, by driver
# An op call asks for the tuned choice every time: the file is looked at (a stat) at most
# this often, and at once after this process wrote it. A stat right after a kernel, with
# the host's caches cold, costs tens of microseconds.
RECHECK_S = 1.0

_lock = threading.Lock()
# The one memo of the tuning state: device key -> (entry, time of the check, file stamp,
# _writes then)
_memo = {}
_writes = 0       # this process's writes: seen at once
_warned = set()


def tuning_file():
    env = os.environ.get("VKQLINEAR_TUNING_FILE")
    if env:
        return _path(env)
    return _default_file(os.environ.get("XDG_CACHE_HOME"), os.environ.get("HOME"))


# Paths cached by the variables they come from: every call of auto looks the file up, and
# building the path anew took longer than the rest of the lookup.
_path = functools.lru_cache(maxsize=16)(Path)


@functools.lru_cache(maxsize=16)
def _default_file(xdg, home):
    base = xdg or os.path.join(home or os.path.expanduser("~"), ".cache")
    return Path(base) / "vkqlinear" / "tuning.json"


def device_key(info):
    """The tuning file's key for a :class:`~vkqlinear.DeviceInfo`."""
    return f"{info.name} | {info.driver_name} {info.driver_info}".strip()


def token_bucket(t):
    """The token bucket of ``t`` tokens: ``t`` rounded up to a power of two."""
    return 1 << max(0, math.ceil(math.log2(max(1, t))))


def point_key(k, n, group_size, out_int8, t):
    """The tuning file's key for a layer shape, group size, output kind and token bucket."""
    return f"{k}x{n} g{group_size} {'int8' if out_int8 else 'float'} T{token_bucket(t)}"


def _warn(path, why):
    if (str(path), why) not in _warned:
        _warned.add((str(path), why))
        warnings.warn(f"vkqlinear: tuning file {path} ignored: {why}", RuntimeWarning,
                      stacklevel=4)


def _read(path, broken=None):
    """The file's ``devices`` mapping, ``{}`` when it is missing; a broken or foreign file
    warns once and reads as empty (and ``broken``, a list, gets its reason)."""
    why = None
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as e:
        why = f"unreadable ({e})"
    except ValueError as e:
        why = f"not valid JSON ({e})"
    else:
        if not isinstance(data, dict) or data.get("version") != VERSION or \
                not isinstance(data.get("devices"), dict):
            why = f"not a vkqlinear tuning file of version {VERSION}"
    if why is not None:
        _warn(path, why)
        if broken is not None:
            broken.append(why)
        return {}
    return data["devices"]


def _stamp(path):
    try:
        st = os.stat(path)
        return (st.st_mtime_ns, st.st_size, st.st_ino)
    except OSError:
        return None


def _entry(info):
    """``(this device's entry, a token that changes when the entry may have)``, the file
    looked at no more than :data:`RECHECK_S` apart."""
    key = device_key(info)
    now = time.monotonic()
    hit = _memo.get(key)
    path = tuning_file()
    if hit is not None and now - hit[1] < RECHECK_S and hit[3] == _writes and \
            hit[2][0] == str(path):           # the same file, looked at moments ago
        return hit[0], (hit[2], hit[3])
    stamp = (str(path), _stamp(path))
    if hit is not None and hit[2] == stamp and hit[3] == _writes:
        entry = hit[0]
    else:
        entry = _read(path).get(key)
        if not isinstance(entry, dict) or entry.get("kernel_generation") != KERNEL_GENERATION:
            entry = {}
    _memo[key] = (entry, now, stamp, _writes)
    return entry, (stamp, _writes)


def writes():
    """How many times this process has written the tuning file."""
    return _writes


def state(info):
    """A token that changes when ``info``'s device's tuned entry may have (cheap: the file
    is looked at no more than :data:`RECHECK_S` apart)."""
    return _entry(info)[1]


def auto_threshold(info):
    """The ``auto`` threshold for ``info``'s device where no config is tuned: the file's
    entry, else the built-in value for its driver, else the default."""
    entry, _ = _entry(info)
    try:
        return int(entry["auto_threshold"])
    except (TypeError, KeyError, ValueError):
        return BUILTIN_THRESHOLDS.get(info.driver_name, DEFAULT_AUTO_THRESHOLD)


def tuned_config(info, k, n, group_size, out_int8, t):
    """``(config, token)``: the tuned config for the point (:func:`point_key`), else the
    one of the nearest tuned point on this device (the same group size; the same output
    kind if one is tuned, the nearest token bucket, then the nearest ``log(K N)``), else
    ``None``; ``token``
    changes when the tuning file may have."""
    entry, token = _entry(info)
    configs = entry.get("configs")
    if not configs:
        return None, token
    key = point_key(k, n, group_size, out_int8, t)
    hit = configs.get(key)
    if hit is None:
        hit = _nearest(configs, k, n, group_size, out_int8, token_bucket(t))
    return (hit.get("config") if isinstance(hit, dict) else None), token


def _nearest(configs, k, n, group_size, out_int8, bucket):
    kind = "int8" if out_int8 else "float"
    best, best_d = None, None
    for name, value in configs.items():
        try:
            shape, g, out, tb = name.split()
            kk, nn = (int(v) for v in shape.split("x"))
            if int(g[1:]) != group_size:
                continue
            # the other output kind last: its kernels differ only in the final store
            d = (out != kind, abs(math.log2(int(tb[1:]) / bucket)),
                 abs(math.log2(kk * nn / (k * n))))
        except (ValueError, ZeroDivisionError):
            continue
        if best_d is None or d < best_d:
            best, best_d = value, d
    return best


def device_entries(info):
    """This device's tuned points: ``{point key: entry}`` (for ``python -m vkqlinear
    info``)."""
    entry, _ = _entry(info)
    return dict(entry.get("configs") or {})


@contextlib.contextmanager
def _locked(path):
    """An exclusive lock on ``path.lock`` (other processes writing the file wait)."""
    import fcntl
    path.parent.mkdir(parents=True, exist_ok=True)
    with _lock, open(path.with_name(path.name + ".lock"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _update(info, change):
    """Read the file under the lock, ``change(entry)`` this device's entry, write it back
    atomically. Returns the file's path."""
    global _writes
    path = tuning_file()
    with _locked(path):
        broken = []
        devices = _read(path, broken)
        if broken:               # kept aside, not overwritten: it may be someone's file
            os.replace(path, path.with_name(path.name + ".broken"))
        entry = devices.get(device_key(info))
        if not isinstance(entry, dict) or entry.get("kernel_generation") != KERNEL_GENERATION:
            entry = {"kernel_generation": KERNEL_GENERATION}
        change(entry)
        devices[device_key(info)] = entry
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump({"version": VERSION, "devices": devices}, f, indent=1,
                          sort_keys=True)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _writes += 1             # after the write: a device that looks now sees it
    return path


def tuned_wait(info):
    """How the tuner found calls on ``info``'s device wait fastest (``"block"`` or
    ``"yield"``), or ``None``."""
    entry, _ = _entry(info)
    wait = entry.get("wait")
    return wait if wait in ("block", "yield") else None


def store_wait(info, wait, extra=None):
    """Record how calls on ``info``'s device should wait (the tuner's measurement)."""
    return _update(info, lambda e: e.update({"wait": wait, **(extra or {})}))


def store_threshold(info, threshold, extra=None):
    """Record ``threshold`` (and ``extra`` fields) for ``info``'s device."""
    return _update(info, lambda e: e.update({"auto_threshold": int(threshold),
                                             **(extra or {})}))


def self_checks(info):
    """The kernel self-check verdicts stored for ``info``'s device (driver version and
    kernel generation included): ``{"tiled/int64": {"ok": bool, "detail": str}}``
    (:mod:`vkqlinear.selfcheck`)."""
    entry, _ = _entry(info)
    checks = entry.get("self_check")
    return {k: v for k, v in checks.items() if isinstance(v, dict) and "ok" in v} \
        if isinstance(checks, dict) else {}


def store_self_check(info, key, verdict):
    """Record the self-check ``verdict`` (a dict with ``"ok"``) of variant ``key``."""
    return _update(info, lambda e: e.setdefault("self_check", {}).update({key: verdict}))


def store_configs(info, results):
    """Record tuned configs for ``info``'s device: ``{point key: entry}``, each entry a dict
    with at least ``"config"``."""
    return _update(info, lambda e: e.setdefault("configs", {}).update(results))
