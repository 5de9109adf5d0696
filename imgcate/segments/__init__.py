"""Segment sensitivity: which parts of an image drive its estimated treatment effect.

Two views, both end to end through the fit's differentiable encoder and its posterior:

* **occlusion** (:func:`segment_sensitivity`): each segment of a chip (SLIC superpixels or a
  regular grid, :func:`segment_chips`) is replaced by a neutral fill, the chip is re-embedded
  and the CATE and cluster probabilities are recomputed under every posterior draw; the change
  (occluded - original) is summarized per (image, segment) with a posterior mean and a central
  credible interval;
* **gradient saliency** (:func:`saliency`): the gradient of the posterior-mean CATE (or of a
  cluster probability) with respect to the pixels, optionally smoothed (SmoothGrad).

:func:`cluster_sensitivity` averages occlusion maps per effect cluster and
:func:`typical_images` picks the images most typical of each cluster.
"""

from imgcate.segments.aggregates import WEIGHTS, cluster_sensitivity, typical_images
from imgcate.segments.gradient import TARGETS, saliency
from imgcate.segments.labels import SEGMENT_METHODS, composite, grid_labels, segment_chips
from imgcate.segments.occlusion import FILLS, fill_values, segment_sensitivity, sensitivity_map

__all__ = [
    "FILLS",
    "SEGMENT_METHODS",
    "TARGETS",
    "WEIGHTS",
    "cluster_sensitivity",
    "composite",
    "fill_values",
    "grid_labels",
    "saliency",
    "segment_chips",
    "segment_sensitivity",
    "sensitivity_map",
    "typical_images",
]
