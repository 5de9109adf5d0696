"""Occlusion: the vmapped pass against a Python loop, its layout, and a pointing game on the
patch setting (patch_trial.py) with a justified chance rate."""

from __future__ import annotations

import warnings
from dataclasses import replace

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import pytest
from patch_trial import (
    covers_zero,
    float64_fit,
    pointing_game,
    synthetic_patch_trial,
)

from imgcate.chips import chips_from_array
from imgcate.embeddings import embed
from imgcate.errors import FitError, InputError
from imgcate.inference import fit
from imgcate.segments import (
    fill_values,
    saliency,
    segment_chips,
    segment_sensitivity,
    sensitivity_map,
)

matplotlib.use("Agg")


def _loop_occlusion(fitted, chips, labels, fills, images, max_draws, seed):
    """Slow, obvious reference: occlude one segment at a time, embed, apply the posterior.

    Uses ``encoder.transform`` and ``effect_function`` (what ``fit.predict`` runs, without its
    cast of the embedding to float32).
    """
    enc = fitted.encoder
    effect = fitted.effect_function(max_draws=max_draws, seed=seed)

    def predict(x):
        cate, prob = effect(jnp.asarray(enc.transform(x[None])))
        return np.asarray(cate)[:, 0], np.asarray(prob)[:, 0]

    out = {}
    for i in images:
        x = chips.values[i]
        base_cate, base_prob = predict(x)
        for s in range(labels[i].max() + 1):
            occ = x.copy()
            mask = labels[i] == s
            occ[:, mask] = fills[i][:, mask]
            cate, prob = predict(occ)
            change = cate - base_cate
            lo, hi = np.quantile(change, [0.05, 0.95])
            out[i, s] = (change.mean(), lo, hi, (prob - base_prob).mean(0))
    return out


@pytest.mark.parametrize(("method", "fill"), [("grid", "mean"), ("slic", "blur")])
def test_vectorized_occlusion_equals_loop(setting, method, fill):
    """vmap over segments + batching + summaries == a Python loop, to 1e-6.

    Run in float64: in float32 the batched and single-chip convolutions differ in the last
    bit of the embedding (~5e-7 at |e| ~ 6), which the membership softmax amplifies to ~3e-6
    in single CATE draws, so float32 runs agree only to ~1e-5 (checked below).
    """
    chips, fitted, _, _ = setting
    images = [0, 1, 5, 7]
    labels = segment_chips(chips, method, n_segments=9)[:8]
    # batch_size 3 over 8 chips: several batches and a padded last batch
    sub = chips_from_array(chips.values[:8], chips.image_ids[:8])
    fills = fill_values(sub, fill, blur_sigma=2.0)
    with jax.enable_x64(True):
        fit64 = float64_fit(fitted)
        result = segment_sensitivity(
            fit64, sub, labels, fill=fill, max_draws=60, seed=3, batch_size=3, blur_sigma=2.0
        )
        expected = _loop_occlusion(fit64, sub, labels, fills, images, 60, 3)
    for (i, s), (mean, lo, hi, prob_change) in expected.items():
        row = result.isel(image=i, segment=s)
        assert abs(float(row.cate_change_mean) - mean) < 1e-6
        assert abs(float(row.cate_change_lower) - lo) < 1e-6
        assert abs(float(row.cate_change_upper) - hi) < 1e-6
        assert np.allclose(row.cluster_prob_change.values, prob_change, rtol=0, atol=1e-6)
    assert result.attrs["n_draws"] == 60
    # the default float32 run agrees with the float32 loop to float32 precision: the two sum
    # in different orders (the vectorized path multiplies every draw's coefficients with the
    # design at once), and float32 (eps 1.2e-7) over the encoder and sums of 160 products
    # leaves ~1e-5 on changes of order 1; a wrong fill, draw or segment moves them far more
    result32 = segment_sensitivity(
        fitted, sub, labels, fill=fill, max_draws=60, seed=3, batch_size=3, blur_sigma=2.0
    )
    expected32 = _loop_occlusion(fitted, sub, labels, fills, images[:2], 60, 3)
    for (i, s), (mean, _, hi, _) in expected32.items():
        row = result32.isel(image=i, segment=s)
        assert abs(float(row.cate_change_mean) - mean) < 1e-4
        assert abs(float(row.cate_change_upper) - hi) < 1e-4


def test_result_layout(grid_result, setting):
    chips, fitted = setting[:2]
    res = grid_result
    assert dict(res.sizes) == {"image": 240, "segment": 16, "cluster": 2, "y": 32, "x": 32}
    assert res.attrs["segment_method"] == "grid"
    assert res.cate_change_lower.attrs["prob"] == 0.9
    assert res.cate_change_lower.attrs["percentile"] == "5%"
    assert res.cate_change_upper.attrs["percentile"] == "95%"
    # a skewed posterior (a segment that matters under few draws) can put its mean outside the
    # central interval, so only the interval's own order is checked
    assert (res.cate_change_lower <= res.cate_change_upper).all()
    assert (res.cate_change_sd >= 0).all()
    assert np.array_equal(res.image.values, chips.image_ids)
    assert np.allclose(res.cluster_prob.sum("cluster"), 1, atol=1e-5)
    # the cluster probability changes sum to zero over clusters
    assert np.allclose(res.cluster_prob_change.sum("cluster"), 0, atol=1e-5)
    # original CATE agrees with predict
    pred = fitted.predict(fitted.encoder.transform(chips.values[:4]))
    assert np.allclose(res.cate.values[:4], pred.cate.mean(0), atol=1e-5)
    pixel = sensitivity_map(res)
    assert pixel.dims == ("image", "y", "x")
    assert float(pixel[3, 9, 17]) == float(res.cate_change_mean[3, 1 * 4 + 2])
    with pytest.raises(InputError, match="cluster="):
        sensitivity_map(res, "cluster_prob_change")
    assert sensitivity_map(res, "cluster_prob_change", cluster=1).shape == (240, 32, 32)


def test_pointing_game_finds_the_patch(grid_result, setting):
    """The top segment overlaps the patch in >= 80% of patch chips (chance: ~25-55%).

    A 12 px patch overlaps 4 to 9 of the 16 cells of a 4 x 4 grid, so a random pick hits it
    25-56% of the time; requiring 80% shows the occlusion finds the causal region.
    """
    _, _, has, masks = setting
    assert pointing_game(grid_result, masks, has) >= 0.8
    # occluding part of the patch lowers the effect: the top segment's change is negative
    top = np.abs(grid_result.cate_change_mean.values[has]).argmax(1)
    top_change = grid_result.cate_change_mean.values[has][np.arange(has.sum()), top]
    assert np.median(top_change) < -0.1


def test_no_patch_chips_have_changes_near_zero(grid_result, setting):
    """For chips with no patch nothing in the image raises the effect: 90% intervals of the
    change cover 0 for >= 90% of their segments.

    Their membership in the high-effect cluster is near 0 under every draw, so occluding any
    segment changes the CATE by almost nothing; 90% is what nominal 90% intervals would give
    under a true zero change, and we see ~99% here.
    """
    _, _, has, _ = setting
    assert covers_zero(grid_result)[~has].mean() >= 0.9


def test_errors_name_the_fix(setting):
    chips, fitted = setting[:2]
    bare = replace(fitted, encoder=None)
    with pytest.raises(FitError, match="embedded with imgcate's encoder"):
        segment_sensitivity(bare, chips)
    with pytest.raises(FitError, match="no encoder"):
        saliency(bare, chips)
    with pytest.raises(InputError, match="bands"):
        segment_sensitivity(fitted, chips.values[:2, :3])
    with pytest.raises(InputError, match="segments has shape"):
        segment_sensitivity(fitted, chips.values[:2], np.zeros((3, 32, 32), int))
    with pytest.raises(InputError, match="fill='none'"):
        segment_sensitivity(fitted, chips.values[:2], fill="none")
    with pytest.raises(InputError, match="prob"):
        segment_sensitivity(fitted, chips.values[:2], prob=1.5)
    with pytest.raises(InputError, match="target="):
        saliency(fitted, chips.values[:2], target="ate")


@pytest.mark.slow
def test_pointing_game_slic_blur_longer_chains():
    """A larger trial, 2 chains, SLIC segments and a blur fill: the same causal region is found.

    SLIC superpixels follow the patch's edges, so the most important superpixel should
    overlap it at least as often as a grid cell does (>= 80%). On chips without the patch the
    90% intervals of the change should cover zero: >= 90% of them, pooled over three fits. One
    fit's share is too unstable to test alone: it moved between 0.87 and 0.99 when the
    embeddings changed by float32 rounding only (the encoder's native and JAX paths, 2026-11-29).
    """
    chips, trial, has, masks = synthetic_patch_trial(1, n=400)
    labels = segment_chips(chips, "slic", n_segments=16, compactness=0.3)
    emb = embed(chips, "rcf", n_features=64, n_components=8, seed=0)
    covered = []
    for seed in (0, 1, 2):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # short chains: low-ESS warnings are expected here
            fitted = fit(
                trial, emb, n_clusters=2, seed=seed, num_warmup=400, num_samples=400, num_chains=2
            )
        result = segment_sensitivity(fitted, chips, labels, fill="blur", seed=0)
        assert pointing_game(result, masks, has) >= 0.8
        finite = np.isfinite(result.cate_change_mean.values[~has])
        covered.append(covers_zero(result)[~has][finite])
        if seed == 0:
            grid = segment_sensitivity(fitted, chips, segment_chips(chips, "grid"), seed=0)
            assert pointing_game(grid, masks, has) >= 0.8
    assert np.concatenate(covered).mean() >= 0.9
