"""The tuning file: read, written atomically, re-checked on open devices; a broken file is
a warning, never a crash. CPU only (device descriptions are made up)."""

import json
import threading

import pytest

from vkqlinear import tuning
from vkqlinear.device import DeviceInfo
from vkqlinear.kernels import DEFAULT_AUTO_THRESHOLD


def fake_info(name="Test GPU", driver="testdrv"):
    return DeviceInfo(index=0, name=name, type="discrete-gpu", vendor_id=1, device_id=2,
                      api_version="1.3.0", driver_version=1, driver_name=driver,
                      driver_info="1.0", limits={}, memory_heaps=[], subgroup={},
                      features={}, extensions=[])


@pytest.fixture
def tfile(tmp_path, monkeypatch):
    path = tmp_path / "tuning.json"
    monkeypatch.setenv("VKQLINEAR_TUNING_FILE", str(path))
    monkeypatch.setattr(tuning, "RECHECK_S", 0.0)
    return path


def test_round_trip_and_builtin_defaults(tfile):
    info = fake_info()
    assert tuning.auto_threshold(info) == DEFAULT_AUTO_THRESHOLD
    assert tuning.auto_threshold(fake_info(driver="llvmpipe")) == \
        tuning.BUILTIN_THRESHOLDS["llvmpipe"]
    path = tuning.store_threshold(info, 17, {"measured": "test"})
    assert path == tfile and tuning.auto_threshold(info) == 17
    assert json.loads(tfile.read_text())[tuning.device_key(info)]["measured"] == "test"
    assert tuning.auto_threshold(fake_info(name="Other")) == DEFAULT_AUTO_THRESHOLD


@pytest.mark.parametrize("content", [b"{broken", b"[1, 2]", b"\xff\xfe not utf-8"])
def test_broken_file_is_ignored_with_a_warning(tfile, content):
    tfile.write_bytes(content)
    with pytest.warns(RuntimeWarning, match="tuning file"):
        assert tuning.auto_threshold(fake_info()) == DEFAULT_AUTO_THRESHOLD
    tuning.store_threshold(fake_info(), 9)            # and it is replaced by a good one
    assert tuning.auto_threshold(fake_info()) == 9


def test_bad_entry_falls_back_to_the_default(tfile):
    tfile.write_text(json.dumps({tuning.device_key(fake_info()): {"auto_threshold": "x"}}))
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
    data[tuning.device_key(info)]["auto_threshold"] = 1000
    tfile.write_text(json.dumps(data))                # "another process"
    assert tuning.auto_threshold(info) == 7           # not re-checked yet
    monkeypatch.setattr(tuning, "RECHECK_S", 0.0)
    assert tuning.auto_threshold(info) == 1000


def test_concurrent_writers_leave_a_valid_file(tfile):
    infos = [fake_info(name=f"GPU {i}") for i in range(4)]

    def write(i):
        for v in range(20):
            tuning.store_threshold(infos[i], v)
    threads = [threading.Thread(target=write, args=(i,)) for i in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    data = json.loads(tfile.read_text())
    assert all(data[tuning.device_key(i)]["auto_threshold"] == 19 for i in infos)
    assert not list(tfile.parent.glob("*.tmp"))
