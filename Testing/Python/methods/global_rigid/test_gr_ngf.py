"""NGF and FFT cross-similarity: analytic fields, and FFT == direct loop over shifts (2D/3D, masks, unequal
sizes, full and local shift windows)."""

import numpy as np
import pytest
import torch

from RegistrationSuiteLib.errors import InputError
from RegistrationSuiteLib.methods.global_rigid.ngf import (
    INVALID_SCORE,
    cross_similarity_direct,
    cross_similarity_fft,
    fast_len,
    full_shift_range,
    gather_spectra,
    gradient_support,
    ngf_products,
    normalized_gradient_field,
    prepare_fixed_spectra,
)


def test_linear_ramp_gives_constant_unit_field_3d():
    z, y, x = torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in (6, 7, 8)], indexing="ij")
    image = (0.01 * x + 0.02 * y)[None, None]  # gradient (0, 0.02, 0.01) per voxel in (z, y, x)
    ngf = normalized_gradient_field(image, epsilon=1e-5)
    expected = torch.tensor([0.0, 2.0, 1.0], dtype=torch.float64) / np.sqrt(5.0)
    interior = ngf[0, :, 1:-1, 1:-1, 1:-1]
    torch.testing.assert_close(interior, expected[:, None, None, None].expand_as(interior), rtol=0, atol=1e-6)
    # The image border lies outside the central-difference support: no artificial edge there.
    assert ngf[0, :, 0].abs().max() == 0 and ngf[0, :, :, :, -1].abs().max() == 0


def test_ramp_without_erosion_keeps_zero_padded_border_2d():
    y, x = torch.meshgrid(torch.arange(5.0), torch.arange(6.0), indexing="ij")
    ngf = normalized_gradient_field((0.1 * x)[None, None], epsilon=1e-5, erode=False)
    assert torch.allclose(ngf[0, 1, 1:-1, 1:-1], torch.ones(3, 4), atol=1e-6)
    assert torch.all(ngf[0, 0, 1:-1] == 0)
    # Zero padding: at x = 0 the difference is (0.1 - 0) / 2 > 0, still a unit vector along +x ...
    assert torch.allclose(ngf[0, 1, 1:-1, 0], torch.ones(3), atol=1e-6)
    # ... but the first row sees the padding along y: an artificial edge that erosion removes.
    assert ngf[0, 0, 0, 1:].abs().min() > 0.1
    assert normalized_gradient_field((0.1 * x)[None, None])[0, :, 0].abs().max() == 0


def test_sphere_gives_radial_normals():
    n, c = 21, 10.0
    z, y, x = torch.meshgrid(*[torch.arange(n, dtype=torch.float64)] * 3, indexing="ij")
    r = torch.sqrt((z - c) ** 2 + (y - c) ** 2 + (x - c) ** 2)
    ngf = normalized_gradient_field((r / 20.0)[None, None], epsilon=1e-5)[0]
    sel = (r > 3) & (r < 9)
    radial = torch.stack([(z - c) / r, (y - c) / r, (x - c) / r])
    cos = (ngf * radial).sum(0)[sel]
    assert cos.min() > 0.99 and torch.allclose(ngf.norm(dim=0)[sel], torch.ones_like(cos), atol=1e-6)


def test_gradient_support_erodes_mask_and_image_border():
    mask = torch.ones(1, 1, 5, 6)
    mask[0, 0, 2, 3] = 0
    support = gradient_support(mask)[0, 0]
    assert support[0].sum() == 0 and support[:, -1].sum() == 0
    assert support[2, 3] == 0 and support[1, 3] == 0 and support[2, 2] == 0 and support[2, 4] == 0
    assert support[1, 1] == 1


def test_products_expand_the_squared_dot_product():
    torch.manual_seed(1)
    a, b = torch.randn(4, 3, 5), torch.randn(4, 3, 5)
    expanded = (ngf_products(a, cross_weight=2.0) * ngf_products(b)).sum(1)
    torch.testing.assert_close(expanded, (a * b).sum(1) ** 2)


def _random_pair(fixed_shape, moving_shape, batch, seed):
    g = torch.Generator().manual_seed(seed)

    def blobs(shape, count):
        img = torch.rand((count, 1) + shape, generator=g, dtype=torch.float64)
        mask = (torch.rand((count, 1) + shape, generator=g) > 0.05).double()
        mask[(slice(None), slice(None)) + tuple(slice(0, 2) for _ in shape)] = 0  # a masked-out corner
        return img, mask

    fi, fm = blobs(fixed_shape, 1)
    mi, mm = blobs(moving_shape, batch)
    fs, ms = gradient_support(fm), gradient_support(mm)
    return normalized_gradient_field(fi, fs, erode=False), fs, normalized_gradient_field(mi, ms, erode=False), ms


@pytest.mark.parametrize(
    "fixed_shape, moving_shape, gamma",
    [((17, 13), (9, 11), 0.5), ((12, 9), (14, 7), 0.3), ((9, 8, 10), (7, 9, 5), 0.5), ((6, 7, 5), (8, 6, 7), 0.25)],
)
def test_fft_equals_direct_over_all_shifts(fixed_shape, moving_shape, gamma):
    fn, fs, mn, ms = _random_pair(fixed_shape, moving_shape, batch=3, seed=sum(fixed_shape))
    lo, hi = full_shift_range(fixed_shape, moving_shape, gamma)
    fft = cross_similarity_fft(prepare_fixed_spectra(fn, fs, moving_shape, lo, hi), mn, ms, min_overlap=gamma)
    direct = cross_similarity_direct(fn, fs, mn, ms, lo, hi, min_overlap=gamma)
    torch.testing.assert_close(fft.overlap, direct.overlap, rtol=0, atol=1e-6)
    torch.testing.assert_close(fft.score, direct.score, rtol=1e-4, atol=1e-8)
    valid = direct.score > INVALID_SCORE
    assert valid.any() and (~valid).any()  # both valid and below-threshold shifts are exercised
    assert torch.equal(fft.best()[1], direct.best()[1])


def test_fft_equals_direct_in_a_local_window_3d():
    fixed_shape, moving_shape = (12, 10, 11), (6, 7, 5)
    fn, fs, mn, ms = _random_pair(fixed_shape, moving_shape, batch=2, seed=5)
    lo, hi = (2, -1, 3), (4, 2, 5)
    fft = cross_similarity_fft(prepare_fixed_spectra(fn, fs, moving_shape, lo, hi), mn, ms, min_overlap=0.5)
    direct = cross_similarity_direct(fn, fs, mn, ms, lo, hi, min_overlap=0.5)
    assert fft.score.shape == (2, 3, 4, 3)
    torch.testing.assert_close(fft.score, direct.score, rtol=1e-4, atol=1e-8)


def test_gathered_windows_equal_separate_windows():
    fixed_shape, moving_shape = (14, 12, 13), (6, 7, 5)
    fn, fs, mn, ms = _random_pair(fixed_shape, moving_shape, batch=4, seed=9)
    windows = [((0, -1, 2), (3, 2, 5)), ((4, 3, -2), (7, 6, 1))]
    spectra = [prepare_fixed_spectra(fn, fs, moving_shape, lo, hi) for lo, hi in windows]
    which = [1, 0, 0, 1]
    gathered = cross_similarity_fft(gather_spectra(spectra, which), mn, ms)
    for b, w in enumerate(which):
        alone = cross_similarity_fft(spectra[w], mn[b:b + 1], ms[b:b + 1])
        torch.testing.assert_close(gathered.score[b:b + 1], alone.score)
        assert torch.equal(gathered.best()[1][b], alone.best()[1][0])


def test_known_shift_is_the_best_and_scores_one():
    torch.manual_seed(3)
    fixed = torch.rand(1, 1, 16, 14, 12, dtype=torch.float64)
    moving = fixed[:, :, 4:14, 3:11, 2:10].clone()  # moving voxel y sits on fixed voxel y + (4, 3, 2)
    fs, ms = gradient_support(torch.ones_like(fixed)), gradient_support(torch.ones_like(moving))
    fn, mn = normalized_gradient_field(fixed, fs, erode=False), normalized_gradient_field(moving, ms, erode=False)
    lo, hi = full_shift_range(fixed.shape[2:], moving.shape[2:], 0.5)
    result = cross_similarity_fft(prepare_fixed_spectra(fn, fs, moving.shape[2:], lo, hi), mn, ms)
    score, shift = result.best()
    assert shift[0].tolist() == [4, 3, 2]
    # Inside the fixed image the interior NGF matches exactly except where the fixed stencil saw more data.
    assert score[0] > 0.9


def test_shift_range_and_fast_len():
    assert full_shift_range((20,), (10,), 0.5) == ((-5,), (15,))
    assert full_shift_range((10, 10), (20, 4), 1.0) == ((-10, 0), (0, 6))
    assert [fast_len(n) for n in (1, 7, 31, 33, 37, 61, 67, 82)] == [1, 8, 32, 36, 40, 64, 72, 90]


def test_fixed_spectra_rejects_mismatched_moving_shape():
    fn, fs, mn, ms = _random_pair((8, 8), (5, 5), batch=1, seed=0)
    spectra = prepare_fixed_spectra(fn, fs, (5, 5), (-2, -2), (5, 5))
    with pytest.raises(InputError, match="moving_ngf"):
        cross_similarity_fft(spectra, mn[:, :, :4], ms[:, :, :4])
    with pytest.raises(InputError, match="image"):
        normalized_gradient_field(torch.zeros(3, 4))
