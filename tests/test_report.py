"""EffectFit.report: one self-contained HTML or Markdown page, every section (issue 18, item 6)."""

from __future__ import annotations

import base64
import re
import warnings
from html.parser import HTMLParser

import pytest

from imgcate import compare_clusters
from imgcate.errors import InputError, OutputExistsError
from imgcate.evaluate import crossfit_cate
from imgcate.report import SECTIONS
from imgcate.simulate import simulate_scenario

TINY = {
    "num_warmup": 60,
    "num_samples": 60,
    "num_chains": 1,
    "init_restarts": 2,
    "init_steps": 100,
    "n_basis": 8,
}


@pytest.fixture(scope="module")
def inputs():
    """A K = 2 fit chosen by a (PSIS-LOO) comparison of K = 1, 2, and a 2-fold crossfit."""
    sim = simulate_scenario(5, effect="clusters", n_units=80)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        comparison = compare_clusters(
            sim.trial, sim.embeddings, k_max=2, criterion="loo", progress=False, **TINY
        )
        crossfit = crossfit_cate(sim.trial, sim.embeddings, n_folds=2, progress=False, **TINY)
    return comparison.fits[2], comparison, crossfit


class _Headings(HTMLParser):
    """The text of every h1/h2 and the src of every img."""

    def __init__(self):
        super().__init__()
        self.headings, self.images, self._in = [], [], None

    def handle_starttag(self, tag, attrs):
        if tag in ("h1", "h2"):
            self._in = tag
        if tag == "img":
            self.images.append(dict(attrs)["src"])

    def handle_endtag(self, tag):
        self._in = None if tag == self._in else self._in

    def handle_data(self, data):
        if self._in == "h2":
            self.headings.append(data)


def _png_ok(uri: str) -> bool:
    prefix = "data:image/png;base64,"
    return (
        uri.startswith(prefix) and base64.b64decode(uri[len(prefix) :])[:8] == b"\x89PNG\r\n\x1a\n"
    )


def test_html_report_has_every_section_and_embeds_its_figures(inputs, tmp_path):
    fit, comparison, crossfit = inputs
    path = fit.report(tmp_path / "report.html", comparison=comparison, crossfit=crossfit)
    text = path.read_text()
    parser = _Headings()
    parser.feed(text)
    assert parser.headings == list(SECTIONS)
    # posterior predictive check, TOC curve, unit CATE by cluster; nothing loaded from outside
    assert len(parser.images) == 3 and all(_png_ok(src) for src in parser.images)
    assert "src='http" not in text and "href=" not in text
    assert text.count("<p class='meaning'>") == len(SECTIONS)
    assert f"Selected K = {comparison.best_k}" in text
    assert "stacking_weight" in text and "blp_hte" in text and "membership_dependence" in text
    assert "No comparison was given" not in text and "No out-of-sample test" not in text


def test_markdown_report_has_every_section_and_embeds_its_figures(inputs, tmp_path):
    fit, comparison, crossfit = inputs
    text = fit.report(tmp_path / "report.md", comparison=comparison, crossfit=crossfit).read_text()
    assert re.findall(r"^## (.+)$", text, re.M) == list(SECTIONS)
    images = re.findall(r"!\[[^]]*\]\(([^)]+)\)", text)
    assert len(images) == 3 and all(_png_ok(src) for src in images)
    for heading in SECTIONS:  # each section opens with its one-sentence meaning
        after = text.split(f"## {heading}\n\n", 1)[1]
        assert after.startswith("*") and after.split("\n", 1)[0].endswith(".*")
    assert "| rate_autoc |" in text and "| cluster | tau_mean |" in text


def test_report_without_comparison_or_crossfit_says_how_to_get_them(inputs, tmp_path):
    fit, _, _ = inputs
    text = fit.report(tmp_path / "plain.md").read_text()
    assert re.findall(r"^## (.+)$", text, re.M) == list(SECTIONS)
    assert "imgcate.compare_clusters(trial, embeddings)" in text
    assert "imgcate.evaluate.crossfit_cate(trial, embeddings)" in text


def test_report_refuses_to_overwrite_and_unknown_suffixes(inputs, tmp_path):
    fit, _, crossfit = inputs
    path = fit.report(tmp_path / "r.html")
    first = path.read_text()
    with pytest.raises(OutputExistsError):
        fit.report(path)
    assert path.read_text() == first
    fit.report(path, crossfit=crossfit, overwrite=True)
    assert "blp_hte" in path.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.html"]  # no temporary left
    with pytest.raises(InputError, match="must end in .html or .md"):
        fit.report(tmp_path / "r.pdf")
    with pytest.raises(InputError, match="prob=1.5 must lie strictly between 0 and 1"):
        fit.report(tmp_path / "r.md", prob=1.5)
    assert not (tmp_path / "r.md").exists()


def test_summary_includes_the_out_of_sample_test_when_asked(inputs):
    fit, _, crossfit = inputs
    assert "Out-of-sample heterogeneity test" not in fit.summary()
    text = fit.summary(out_of_sample=crossfit)
    assert "Out-of-sample heterogeneity test (2 spatial folds" in text
    assert "blp_hte" in text and "calibration_differential" in text


def test_svi_report_says_what_svi_checked(tmp_path):
    """An SVI fit's diagnostics name no R-hat, ESS or divergences; with too few steps to judge
    the loss, and without a kept loss, the report says so instead of printing NaN."""
    import copy

    from imgcate import fit
    from imgcate.report import write_report
    from imgcate.simulate import simulate_trial

    sim = simulate_trial(2, 300, 2)
    short = fit(sim.trial, sim.embeddings, method="svi", svi_steps=10, svi_draws=50, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no mean of an empty slice
        text = write_report(short, tmp_path / "short.md").read_text()
    assert "at the last of 10 (too few steps to judge" in text
    assert not re.search(r"[\s(]nan[\s,.)]", text, re.IGNORECASE)  # not in base64 images
    assert "svi (full guide): 50 draws from the guide after 10 steps;" in text
    assert "R-hat, ESS and divergences do not apply" in text and "chain(s)" not in text
    bare = copy.copy(short)
    object.__setattr__(bare, "idata", short.idata.copy())
    del bare.idata["svi_loss"]
    text = write_report(bare, tmp_path / "bare.md").read_text()
    assert "This fit kept no SVI loss" in text
