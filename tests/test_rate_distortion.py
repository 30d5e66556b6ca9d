"""The Gaussian rate-distortion reference of lplr_index.evaluation."""

from __future__ import annotations

import numpy as np
import pytest

from lplr_index import LPLRIndex
from lplr_index.evaluation import _bits_for, _water_fill, rate_distortion


@pytest.mark.parametrize("bits_per_dim", [0.25, 1.0, 3.0])
def test_water_filling_on_equal_variances_is_the_textbook_formula(bits_per_dim):
    # d independent unit Gaussians at R bits each: D = d 2^(-2R)
    assert _water_fill(np.ones(10), 10 * bits_per_dim) == pytest.approx(10 * 2 ** (-2 * bits_per_dim), rel=1e-9)
    assert _bits_for(np.ones(10), 10 * 2 ** (-2 * bits_per_dim)) == pytest.approx(10 * bits_per_dim, rel=1e-6)


def test_water_filling_drops_weak_components():
    # variances 16 and 1/16, 2 bits in all: theta = 1 (16 gets 2 bits, 1/16 none)
    assert _water_fill([16.0, 1 / 16], 2.0) == pytest.approx(1 + 1 / 16, rel=1e-9)
    assert _water_fill([4.0, 1.0], 0.0) == pytest.approx(5.0)


def test_report_of_an_index(rng):
    basis, _ = np.linalg.qr(rng.standard_normal((32, 32)))
    X = ((rng.standard_normal((4000, 32)) * 0.9 ** np.arange(32)) @ basis).astype(np.float32)
    index = LPLRIndex(32, bits_per_coordinate=1).build(X)
    r = rate_distortion(X, index, index.bits_per_coordinate)
    direct = rate_distortion(X, index.reconstruct(), index.bits_per_coordinate)
    assert r == direct
    # no code beats the reference on Gaussian data; the index is within a few times of it
    assert 1.0 < r.ratio < 5.0  # observed 3.5
    assert 0 < r.equivalent_bits < r.bits_per_coordinate
    assert r.relative_error == pytest.approx(index.fit_error, rel=1e-3)
    # the code options' Gaussian floor sits between the reference and the index
    assert 1.0 < r.floor_ratio <= r.ratio  # observed 1.4 and 3.5


@pytest.mark.parametrize("decay", [1.0, 0.9, 0.6])
def test_the_code_options_floor_lies_above_the_reference_and_falls_with_the_rate(decay):
    from lplr_index.vq import KMEANS_DISTORTION, gaussian_floor

    var = decay ** np.arange(64)
    floors = [gaussian_floor(var, 64 * b) / _water_fill(var, 64 * b) for b in (0.25, 0.5, 1, 2, 4)]
    # every option's distortion is above the Gaussian D(R) at its rate: so is any mix of them
    assert all(f > 1.0 for f in floors)
    absolute = [gaussian_floor(var, 64 * b) for b in (0.25, 0.5, 1, 2, 4)]
    assert all(a > b for a, b in zip(absolute, absolute[1:]))
    # equal variances at 1 bit per direction: groups of 4 sharing a code (or better) -- the
    # (4, 1) entry is one candidate, so the floor is at most its distortion
    if decay == 1.0:
        assert gaussian_floor(var, 64.0) <= KMEANS_DISTORTION[(4, 1)] * 64 + 1e-9


def test_bad_arguments():
    X = np.ones((10, 3))
    with pytest.raises(ValueError, match=r"X_hat must have the shape of X \(10, 3\), got \(10, 2\)"):
        rate_distortion(X, np.ones((10, 2)), 1)
    with pytest.raises(ValueError, match="bits_per_coordinate must be a finite number >= 0, got -1"):
        rate_distortion(X, X, -1)
    with pytest.raises(ValueError, match="at least 2 vectors"):
        rate_distortion(X[:1], X[:1], 1)
