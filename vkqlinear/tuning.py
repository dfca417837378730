"""The tuning file: what ``python -m vkqlinear bench --tune`` measured on a device, read
back by the kernel choice.

Location: ``$VKQLINEAR_TUNING_FILE``, else ``$XDG_CACHE_HOME/vkqlinear/tuning.json``, else
``~/.cache/vkqlinear/tuning.json``. It maps a device key (name, driver name and version) to
``{"auto_threshold": T, ...}``: ``algorithm="auto"`` takes the COOPERATIVE kernel up to
``T`` tokens. A device without an entry uses the built-in value for its driver
(:data:`BUILTIN_THRESHOLDS`), else :data:`~vkqlinear.kernels.DEFAULT_AUTO_THRESHOLD`.
An unreadable or malformed file is ignored with a warning.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
import warnings
from pathlib import Path

from .kernels import DEFAULT_AUTO_THRESHOLD

__all__ = ["tuning_file", "device_key", "auto_threshold", "store_threshold",
           "BUILTIN_THRESHOLDS", "RECHECK_S"]

# Measured with `python -m vkqlinear bench --quick` where the file has no entry, by driver:
# on lavapipe the tiled kernel was fastest from T = 1 on every quick shape.
BUILTIN_THRESHOLDS = {"llvmpipe": 0}
# An op call asks for the threshold every time: the file is looked at (a stat) at most this
# often, and at once after this process wrote it. A stat right after a kernel, with the
# host's caches cold, costs tens of microseconds.
RECHECK_S = 1.0

_lock = threading.Lock()
_memo = {}        # device key -> (threshold, time of the check, file stamp, _writes then)
_writes = 0       # this process's writes: seen at once
_warned = set()


def tuning_file():
    env = os.environ.get("VKQLINEAR_TUNING_FILE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "vkqlinear" / "tuning.json"


def device_key(info):
    """The tuning file's key for a :class:`~vkqlinear.DeviceInfo`."""
    return f"{info.name} | {info.driver_name} {info.driver_info}".strip()


def _read(path):
    """The file's entries, ``{}`` when it is missing; a broken file warns once."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as e:
        _warn(path, f"unreadable ({e})")
        return {}
    try:
        data = json.loads(text)
    except ValueError as e:
        _warn(path, f"not valid JSON ({e})")
        return {}
    if not isinstance(data, dict):
        _warn(path, "not a JSON object")
        return {}
    return data


def _warn(path, why):
    if (str(path), why) not in _warned:
        _warned.add((str(path), why))
        warnings.warn(f"vkqlinear: tuning file {path} ignored: {why}", RuntimeWarning,
                      stacklevel=4)


def _stamp(path):
    try:
        st = os.stat(path)
        return (st.st_mtime_ns, st.st_size, st.st_ino)
    except OSError:
        return None


def auto_threshold(info):
    """The ``auto`` threshold for ``info``'s device: the file's entry, else the built-in
    value for its driver, else the default."""
    key = device_key(info)
    now = time.monotonic()
    hit = _memo.get(key)
    if hit is not None and now - hit[1] < RECHECK_S and hit[3] == _writes:
        return hit[0]
    path = tuning_file()
    stamp = (str(path), _stamp(path))
    if hit is not None and hit[2] == stamp and hit[3] == _writes:
        value = hit[0]
    else:
        entry = _read(path).get(key)
        try:
            value = int(entry["auto_threshold"])
        except (TypeError, KeyError, ValueError):
            value = BUILTIN_THRESHOLDS.get(info.driver_name, DEFAULT_AUTO_THRESHOLD)
    _memo[key] = (value, now, stamp, _writes)
    return value


def store_threshold(info, threshold, extra=None):
    """Record ``threshold`` (and ``extra`` fields) for ``info``'s device in the tuning file,
    atomically (a temporary file renamed into place). Returns the file's path."""
    global _writes
    path = tuning_file()
    with _lock:
        data = _read(path)
        data[device_key(info)] = {"auto_threshold": int(threshold), **(extra or {})}
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent=2, sort_keys=True)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _writes += 1             # after the write: a device that looks now sees it
    return path
