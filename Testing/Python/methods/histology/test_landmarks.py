"""ANHIR landmark files and evaluation."""

import numpy as np
import pytest

from RegistrationSuiteLib.errors import InputError
from RegistrationSuiteLib.methods.histology.landmarks import (read_landmarks, relative_tre, robustness,
                                                              write_landmarks)


def test_roundtrip_anhir_format(tmp_path):
    pts = np.array([[63.0, 309.0], [77.5, 441.25]])
    path = tmp_path / "l.csv"
    write_landmarks(pts, path)
    assert path.read_text().splitlines()[0] == ",X,Y"
    np.testing.assert_allclose(read_landmarks(path, size=(500, 500)), pts)


@pytest.mark.parametrize("text, match", [
    (",A,B\n0,1,2\n", "expected columns X,Y"),
    (",X,Y\n0,1,abc\n", "line 2: expected numbers"),
    (",X,Y\n", "holds no landmarks"),
    (",X,Y\n0,10,20\n1,600,20\n", "1 landmark\\(s\\) outside the 500x400 image, first at row 2"),
])
def test_bad_files(tmp_path, text, match):
    path = tmp_path / "l.csv"
    path.write_text(text)
    with pytest.raises(InputError, match=match):
        read_landmarks(path, "--fixed-landmarks", size=(500, 400))


def test_rtre_and_robustness():
    truth = np.array([[0.0, 0.0], [10.0, 0.0]])
    pred = np.array([[3.0, 4.0], [10.0, 0.0]])
    np.testing.assert_allclose(relative_tre(pred, truth, 100.0), [0.05, 0.0])
    assert robustness(np.array([1.0, 5.0]), np.array([2.0, 2.0])) == 0.5
