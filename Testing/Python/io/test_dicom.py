"""DICOM series folders (needs ../shared/data)."""

import pytest

from RegistrationSuiteLib.io import read_image

pytestmark = pytest.mark.shared_data


def test_reads_dicom_series_folder(shared_data):
    folder = shared_data / "abdomen" / "subjectB_ct_dicom"
    if not folder.is_dir():
        pytest.skip("abdomen/subjectB_ct_dicom not in ../shared/data")
    img = read_image(folder, "fixed").image
    assert img.GetDimension() == 3
    assert img.GetSize()[2] == 20
    assert img.GetSpacing()[0] == pytest.approx(0.98, abs=0.01)
