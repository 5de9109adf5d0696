"""The Gaussian-process basis (:func:`imgcate.config.kernel_basis`) against its definition."""

from __future__ import annotations

import numpy as np
import pytest

import imgcate.config
from imgcate.config import kernel_basis
from imgcate.kernels import basis_features, squared_exponential


@pytest.fixture(scope="module")
def z() -> np.ndarray:
    return np.random.default_rng(3).normal(size=(300, 4))


def test_leading_eigenvalues_of_the_kernel(z):
    # with every unit a landmark (300 < 400) the Nystrom features reproduce the kernel
    # matrix, so the basis before its linear fit is removed holds the kernel's top
    # eigenvalues over the units, computed here the slow obvious way
    landmarks, transform, _ = kernel_basis(z, 20, seed=0)
    assert len(landmarks) == len(z)
    raw = squared_exponential(z, landmarks, np) @ transform
    exact = np.sort(np.linalg.eigvalsh(squared_exponential(z, z, np)))[::-1][:20]
    np.testing.assert_allclose(np.linalg.eigvalsh(raw.T @ raw)[::-1], exact, rtol=1e-6)


def test_orthogonal_to_the_linear_terms(z):
    basis = np.asarray(basis_features(z, *kernel_basis(z, 20, seed=0)))
    linear = np.column_stack([np.ones(len(z)), z])
    assert np.abs(linear.T @ basis).max() / len(z) < 1e-6  # float32 rounding (JAX)
    assert basis.std(0).min() > 1e-3  # not emptied by the projection


def test_chunks_give_the_same_basis(z, monkeypatch):
    whole = kernel_basis(z, 20, seed=0)
    monkeypatch.setattr(imgcate.config, "BASIS_CHUNK", 37)
    chunked = kernel_basis(z, 20, seed=0)
    for a, b in zip(whole, chunked, strict=True):
        # eigenvectors are defined up to sign; the functions they give are compared
        assert a.shape == b.shape
    rows = basis_features(z, *whole), basis_features(z, *chunked)
    np.testing.assert_allclose(np.abs(rows[0]), np.abs(rows[1]), atol=1e-5)
