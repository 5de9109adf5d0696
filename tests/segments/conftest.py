"""Fixtures of the segment tests: one fit on the patch setting (patch_trial.py) for the
session, and its grid occlusion."""

from __future__ import annotations

import pytest
from patch_trial import fit_patch_trial, synthetic_patch_trial

from imgcate.segments import segment_chips, segment_sensitivity


@pytest.fixture(scope="session")
def setting():
    chips, trial, has, masks = synthetic_patch_trial(0)
    fitted = fit_patch_trial(chips, trial, num_warmup=150, num_samples=150, num_chains=1)
    return chips, fitted, has, masks


@pytest.fixture(scope="session")
def grid_result(setting):
    chips, fitted, _, _ = setting
    labels = segment_chips(chips, "grid", n_segments=16)
    return segment_sensitivity(fitted, chips, labels, seed=0)
