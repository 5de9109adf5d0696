"""The validators shared by the modules: one message per mistake, whichever module checks it."""

from __future__ import annotations

import re

import numpy as np
import pytest

from imgcate.errors import InputError
from imgcate.validation import (
    as_features,
    as_propensity,
    as_treatment,
    as_vector,
    check_choice,
    check_lengths,
    check_positive_int,
    check_prob,
    cluster_codes,
    rng_from_seed,
    seed_int,
)


def test_treatment_and_propensity():
    np.testing.assert_array_equal(as_treatment([0, 1, 1]), [0.0, 1.0, 1.0])
    with pytest.raises(InputError, match=r"treatment must be binary \(0/1\); found value\(s\) \[2"):
        as_treatment([0, 1, 2])
    with pytest.raises(InputError, match="must contain both treated"):
        as_treatment([1, 1])
    with pytest.raises(InputError, match=r"found value\(s\) \['no', 'yes'\]\. Recode it"):
        as_treatment(np.array(["no", "yes", "no"]))  # as read from a table, before recoding
    with pytest.raises(InputError, match="treatment has 2 entries but outcome/scores have 3"):
        as_treatment([0, 1], n=3)
    np.testing.assert_array_equal(as_propensity(0.5, n=3), [0.5, 0.5, 0.5])  # known by design
    with pytest.raises(InputError, match="one value per unit, got shape"):
        as_propensity(0.5)
    with pytest.raises(InputError, match="strictly between 0 and 1; 1 value"):
        as_propensity([0.2, 1.0])


def test_clusters_lengths_features_and_vectors():
    np.testing.assert_array_equal(cluster_codes(["b", "a", "b"], 3), [1, 0, 1])
    assert cluster_codes(None, 3) is None
    with pytest.raises(InputError, match="clusters has 2 entries but there are 3 units"):
        cluster_codes(["a", "b"], 3)
    with pytest.raises(InputError, match="missing values"):
        cluster_codes(np.array(["a", None, "b"], dtype=object), 3)
    with pytest.raises(InputError, match="at least 2"):
        cluster_codes(["a", "a", "a"], 3, min_clusters=2)
    assert check_lengths(a=np.zeros(3), b=None, c=np.ones(3)) == 3
    with pytest.raises(InputError, match="a has 3 units but c has 2"):
        check_lengths(a=np.zeros(3), c=np.ones(2))
    assert as_features([1.0, 2.0]).shape == (2, 1)
    with pytest.raises(InputError, match=r"features must have shape \(unit, feature\)"):
        as_features(np.zeros((2, 2, 2)))
    with pytest.raises(InputError, match="NaN or infinite"):
        as_vector("outcome", [1.0, np.nan])


def test_choices_probabilities_counts_and_seeds():
    assert check_choice("method", "a", ("a", "b")) == "a"
    with pytest.raises(InputError, match="method='c' is not allowed; use one of 'a', 'b'"):
        check_choice("method", "c", ("a", "b"))
    assert check_prob(0.9) == 0.9
    for bad in (0, 1, 1.5, "x", None):
        with pytest.raises(InputError, match="must lie strictly between 0 and 1"):
            check_prob(bad)
    assert check_positive_int("n", 3.0) == 3
    with pytest.raises(InputError, match="n=0 must be a positive integer"):
        check_positive_int("n", 0)
    assert rng_from_seed(1).integers(100) == rng_from_seed(1).integers(100)
    with pytest.raises(InputError, match="seed is required"):
        rng_from_seed(None)
    with pytest.raises(InputError, match="seed must be an int"):
        seed_int(True)


def test_fit_options_are_checked_for_their_type():
    """Each FitConfig option of the type its annotation names, NumPy's scalars included;
    every annotation is one the check reads (a new option of another type fails here)."""
    from dataclasses import fields

    from imgcate.config import FitConfig
    from imgcate.validation import KINDS

    for option in fields(FitConfig):
        kind, _, optional = option.type.partition(" | ")
        assert kind in KINDS and optional in ("", "None"), option
    FitConfig(
        equal_effects=np.True_,
        num_chains=np.int64(2),
        target_accept=np.float32(0.9),
        floor=0,
        likelihood="hurdle",
        n_basis=None,
    ).validate()
    for options, message in [
        ({"n_basis": "32"}, "n_basis='32' must be an integer or None, e.g. n_basis=32"),
        ({"num_samples": 10.5}, "num_samples=10.5 must be an integer, e.g. num_samples=500"),
        ({"n_clusters": True}, "n_clusters=True must be an integer"),
        ({"progress": 1}, "progress=1 must be True or False"),
        ({"target_accept": "0.9"}, "target_accept='0.9' must be a number"),
        ({"likelihood": 3}, "likelihood=3 must be text"),
        ({"svi_batch_size": 0}, "svi_batch_size=0 must be a positive number of units"),
        ({"svi_batch_size": -5}, "svi_batch_size=-5 must be a positive number of units"),
        ({"svi_learning_rate": 0.0}, "svi_learning_rate=0.0 must be positive"),
        ({"svi_learning_rate": -0.01}, "svi_learning_rate=-0.01 must be positive"),
    ]:
        with pytest.raises(InputError, match=re.escape(message)):
            FitConfig(**options).validate()


def test_command_line_options_read_json_and_python_constants():
    from imgcate.cli.common import parse_options

    given = ("a=True", "b=false", "c=None", "d=null", "e=3", "f=linear", "g=0.5")
    assert parse_options(given) == {
        "a": True,
        "b": False,
        "c": None,
        "d": None,
        "e": 3,
        "f": "linear",
        "g": 0.5,
    }
