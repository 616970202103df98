"""The on-disk result cache: its folder, round trips, unreadable entries, clearing only its own files."""

import numpy as np
import pytest

from RegistrationSuiteLib import cache

KEY = "ab" * 32


def test_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(cache.ENV, str(tmp_path / "c"))
    assert cache.cache_dir() == tmp_path / "c"
    monkeypatch.delenv(cache.ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_dir() == tmp_path / "xdg" / "registration-suite"


def test_round_trip_miss_and_clear(tmp_path):
    assert cache.load_entry("demo", KEY) is None
    m = np.arange(16.0).reshape(4, 4)
    assert cache.store_entry("demo", KEY, {"matrix": m, "n": np.int64(3)})
    back = cache.load_entry("demo", KEY)
    np.testing.assert_array_equal(back["matrix"], m)
    assert back["n"] == 3 and cache.cache_usage()["entries"] == 1
    (cache.cache_dir() / "demo" / ("cd" * 32 + ".json")).write_text("{not json")
    assert cache.load_entry("demo", "cd" * 32) is None  # unreadable: a miss, never an error
    keep = cache.cache_dir() / "demo" / "notes.txt"
    keep.write_text("a user's file")
    assert cache.clear_cache("other") == 0 and cache.clear_cache() == 2
    assert keep.exists() and cache.cache_usage()["entries"] == 0


def test_bad_names_rejected():
    with pytest.raises(ValueError, match="key: expected a hex digest"):
        cache.load_entry("demo", "../escape")
    with pytest.raises(ValueError, match="namespace"):
        cache.store_entry("../x", KEY, {})


def test_unwritable_folder_is_not_an_error(monkeypatch, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv(cache.ENV, str(blocker))  # a file where the folder should be
    assert cache.store_entry("demo", KEY, {"a": 1}) is False
