"""The tuning file: versioned, written atomically under a lock (two writers keep both
entries), re-checked on open devices, tuned configs found exactly or by the nearest point;
a broken or foreign file is a warning, never a crash. CPU only (device descriptions are
made up)."""

import json
import threading

import pytest

from vkqlinear import tuning
from vkqlinear.device import DeviceInfo
from vkqlinear.kernels import DEFAULT_AUTO_THRESHOLD, KERNEL_GENERATION


def fake_info(name="Test GPU", driver="testdrv"):
    return DeviceInfo(index=0, name=name, type="discrete-gpu", vendor_id=1, device_id=2,
                      api_version="1.3.0", driver_version=1, driver_name=driver,
                      driver_info="1.0", limits={}, memory_heaps=[], subgroup={},
                      features={}, extensions=[])


def test_round_trip_and_builtin_defaults(tfile):
    info = fake_info()
    assert tuning.auto_threshold(info) == DEFAULT_AUTO_THRESHOLD
    assert tuning.auto_threshold(fake_info(driver="llvmpipe")) == \
        tuning.BUILTIN_THRESHOLDS["llvmpipe"]
    path = tuning.store_threshold(info, 17, {"measured": "test"})
    assert path == tfile and tuning.auto_threshold(info) == 17
    doc = json.loads(tfile.read_text())
    assert doc["version"] == tuning.VERSION
    assert doc["devices"][tuning.device_key(info)]["measured"] == "test"
    assert tuning.auto_threshold(fake_info(name="Other")) == DEFAULT_AUTO_THRESHOLD


@pytest.mark.parametrize("content", [b"{broken", b"[1, 2]", b"\xff\xfe not utf-8",
                                     b'{"Test GPU | testdrv 1.0": {"auto_threshold": 3}}',
                                     b'{"version": 99, "devices": {}}'])
def test_broken_file_is_ignored_with_a_warning(tfile, content):
    tfile.write_bytes(content)
    with pytest.warns(RuntimeWarning, match="tuning file"):
        assert tuning.auto_threshold(fake_info()) == DEFAULT_AUTO_THRESHOLD
    tuning.store_threshold(fake_info(), 9)            # a good one written beside it
    assert tuning.auto_threshold(fake_info()) == 9
    assert (tfile.parent / "tuning.json.broken").read_bytes() == content


def test_bad_entry_falls_back_to_the_default(tfile):
    entry = {"kernel_generation": KERNEL_GENERATION, "auto_threshold": "x"}
    tfile.write_text(json.dumps({"version": tuning.VERSION,
                                 "devices": {tuning.device_key(fake_info()): entry}}))
    assert tuning.auto_threshold(fake_info()) == DEFAULT_AUTO_THRESHOLD


def test_entries_of_another_kernel_generation_are_ignored(tfile):
    entry = {"kernel_generation": KERNEL_GENERATION - 1, "auto_threshold": 11}
    tfile.write_text(json.dumps({"version": tuning.VERSION,
                                 "devices": {tuning.device_key(fake_info()): entry}}))
    assert tuning.auto_threshold(fake_info()) == DEFAULT_AUTO_THRESHOLD
    tuning.store_threshold(fake_info(), 9)            # and it is replaced by a good one
    assert tuning.auto_threshold(fake_info()) == 9


def test_change_by_another_process_is_seen_after_the_recheck(tfile, monkeypatch):
    info = fake_info()
    tuning.store_threshold(info, 5)
    assert tuning.auto_threshold(info) == 5
    tuning.store_threshold(info, 7)                   # this process: seen at once
    monkeypatch.setattr(tuning, "RECHECK_S", 3600.0)
    assert tuning.auto_threshold(info) == 7
    data = json.loads(tfile.read_text())
    data["devices"][tuning.device_key(info)]["auto_threshold"] = 1000
    tfile.write_text(json.dumps(data))                # "another process"
    assert tuning.auto_threshold(info) == 7           # not re-checked yet
    monkeypatch.setattr(tuning, "RECHECK_S", 0.0)
    assert tuning.auto_threshold(info) == 1000


def test_another_file_is_read_at_once(tfile, monkeypatch):
    """Pointing $VKQLINEAR_TUNING_FILE elsewhere takes effect on the next look, however
    soon: the recheck interval covers one file's changes, not a change of file."""
    info = fake_info()
    tuning.store_threshold(info, 5)
    monkeypatch.setattr(tuning, "RECHECK_S", 3600.0)
    assert tuning.auto_threshold(info) == 5
    monkeypatch.setenv("VKQLINEAR_TUNING_FILE", str(tfile.with_name("other.json")))
    assert tuning.auto_threshold(info) == DEFAULT_AUTO_THRESHOLD
    monkeypatch.setenv("VKQLINEAR_TUNING_FILE", str(tfile))
    assert tuning.auto_threshold(info) == 5


def test_concurrent_writers_leave_a_valid_file(tfile):
    infos = [fake_info(name=f"GPU {i}") for i in range(4)]

    def write(i):
        for v in range(20):
            tuning.store_threshold(infos[i], v)
    threads = [threading.Thread(target=write, args=(i,)) for i in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    data = json.loads(tfile.read_text())["devices"]
    assert all(data[tuning.device_key(i)]["auto_threshold"] == 19 for i in infos)
    assert not list(tfile.parent.glob("*.tmp"))


def _writer(path, name, count):
    """A process storing ``count`` configs for its own device name."""
    import os
    os.environ["VKQLINEAR_TUNING_FILE"] = path
    from vkqlinear import tuning as tn
    info = fake_info(name=name)
    for i in range(count):
        tn.store_configs(info, {f"{64 * (i + 1)}x64 g32 float T1": {"config": {"tm": i}}})


def test_two_tuning_processes_at_once_leave_a_valid_file_with_both(tfile):
    import multiprocessing
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tfile), f"GPU {i}", 15)) for i in range(2)]
    [p.start() for p in procs]
    [p.join(120) for p in procs]
    assert all(p.exitcode == 0 for p in procs)
    devices = json.loads(tfile.read_text())["devices"]
    for i in range(2):
        assert len(devices[tuning.device_key(fake_info(name=f"GPU {i}"))]["configs"]) == 15


def test_tuned_configs_exact_then_nearest(tfile):
    info = fake_info()
    assert tuning.tuned_config(info, 4096, 4096, 32, False, 1)[0] is None
    tuning.store_configs(info, {
        tuning.point_key(4096, 4096, 32, False, 1): {"config": {"tm": 1}},
        tuning.point_key(4096, 4096, 32, False, 64): {"config": {"tm": 8}},
        tuning.point_key(1536, 384, 32, False, 1): {"config": {"tm": 2}},
        tuning.point_key(4096, 4096, 128, False, 1): {"config": {"tm": 4}}})
    def tm(k, n, g, t, out=False):
        config = tuning.tuned_config(info, k, n, g, out, t)[0]
        return None if config is None else config["tm"]
    assert tm(4096, 4096, 32, 1) == 1 and tm(4096, 4096, 128, 1) == 4
    assert tm(4096, 4096, 32, 48) == 8            # bucket 64
    assert tm(4096, 4096, 32, 3) == 1             # nearest bucket: 4 is closer to 1 than 64
    assert tm(2048, 2048, 32, 1) == 1             # nearest shape, by log(K N)
    assert tm(1024, 512, 32, 1) == 2
    assert tm(4096, 4096, 64, 1) is None          # no entry of that group size
    assert tm(4096, 4096, 32, 1, out=True) == 1   # int8 output: the float entries' kernel
    assert tm(4096, 4096, 32, 48, out=True) == 8
    tuning.store_configs(info, {
        tuning.point_key(4096, 4096, 32, True, 64): {"config": {"tm": 2}}})
    assert tm(4096, 4096, 32, 1, out=True) == 2   # an int8 entry first, however far
    assert tm(4096, 4096, 32, 1) == 1
    assert set(tuning.device_entries(info)) == {
        "4096x4096 g32 float T1", "4096x4096 g32 float T64", "1536x384 g32 float T1",
        "4096x4096 g128 float T1", "4096x4096 g32 int8 T64"}


def test_the_file_follows_the_environment(monkeypatch, tmp_path):
    """The path is cached, but by the variables it comes from: a change of any is seen."""
    monkeypatch.delenv("VKQLINEAR_TUNING_FILE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "a"))
    assert tuning.tuning_file() == tmp_path / "a" / ".cache" / "vkqlinear" / "tuning.json"
    monkeypatch.setenv("HOME", str(tmp_path / "b"))
    assert tuning.tuning_file() == tmp_path / "b" / ".cache" / "vkqlinear" / "tuning.json"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert tuning.tuning_file() == tmp_path / "x" / "vkqlinear" / "tuning.json"
    monkeypatch.setenv("VKQLINEAR_TUNING_FILE", str(tmp_path / "t.json"))
    assert tuning.tuning_file() == tmp_path / "t.json"
