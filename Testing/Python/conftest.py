"""Shared fixtures: a headless MRML scene (needs slicer-core), the optional ../shared/data folder, a private result
cache and a four-thread ITK default."""

from pathlib import Path

import pytest


@pytest.fixture
def headless_scene():
    """A fresh ``vtkMRMLScene`` with the application and module logics attached; ``slicer.mrmlScene`` is
    set to it for the test and released afterwards."""
    pytest.importorskip("slicer", reason="needs the MRML libraries (pip install slicer-core)")
    from RegistrationSuiteLib.mrml.scene import close_headless_scene, create_headless_scene

    scene = create_headless_scene()
    yield scene
    close_headless_scene(scene)


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data`` beside the repository root (absent in a user's fresh clone: skip)."""
    path = Path(__file__).resolve().parents[2].parent / "shared" / "data"
    if not path.is_dir():
        pytest.skip("../shared/data not available")
    return path


@pytest.fixture(autouse=True)
def private_result_cache(tmp_path_factory, monkeypatch):
    """Every test gets an empty on-disk result cache (RegistrationSuiteLib.cache), never the user's; child
    processes started by a test inherit it through the environment."""
    monkeypatch.setenv("REGISTRATION_SUITE_CACHE", str(tmp_path_factory.mktemp("result-cache")))


@pytest.fixture
def many_itk_threads():
    """Four ITK threads by default (more than the two-core CI machine has), so thread-order effects would show;
    the previous default is restored afterwards."""
    import SimpleITK as sitk

    before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(4)
    yield
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(before)
