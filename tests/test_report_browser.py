"""report.html as a reader's browser shows it: headless Chromium opens one short run's report per family.

Skipped where no Chromium is installed (`.ci/run` installs Debian's `chromium` when it is missing)."""

import io

import numpy as np
import pytest
from PIL import Image

import genlab
from chromium import Chromium, find_chromium
from test_accelerator import TINY

CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine")

# every family's own figures, beside loss.png and curves.png
OWN_FIGURES = {
    "ddpm": ["forward", "backward", "strip"],
    "vae": ["reconstructions", "interpolations", "traversal", "samples"],
    "gan": ["samples", "test_images"],
    "inpaint-gan": ["inpaint_box", "inpaint_free"],
    "cyclegan": ["translate_xy", "translate_yx"],
    "ncsn": ["score_field", "langevin_steps", "trajectories", "samples"],
    "made": ["samples", "test_images"],
    "flow": ["density"],
    "ldm": ["autoencoder", "latents", "autoencoder_loss", "forward", "strip"],
}
SECTIONS = ["Final metrics", "Samples", "Figures", "Sample grids during training", "Configuration"]


@pytest.fixture(scope="module")
def browser():
    with Chromium(CHROMIUM) as b:
        yield b


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    """One 6-step run of every family with a sample grid at step 3: family -> its report.html."""
    root = tmp_path_factory.mktemp("reports")
    out = {}
    for family, options in TINY.items():
        if family == "ncsn":  # the end-of-run Langevin figures sized down
            options = {**options, "num_sigmas": 3, "langevin_steps": 2}
        genlab.train(family, out=root / family, steps=6, sample_every=3, progress=False, final_eval_n=8,
                     device="cpu", **options)
        out[family] = root / family / "report.html"
    return out


def blank_share(png: bytes) -> float:
    """The share of the screenshot's pixels that are the page background (its most common colour)."""
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).reshape(-1, 3)
    _, counts = np.unique(pixels, axis=0, return_counts=True)
    return counts.max() / len(pixels)


@pytest.mark.parametrize("family", list(TINY))
def test_every_familys_report_opens_whole_in_a_browser(browser, reports, family):
    report = reports[family]
    page = browser.open_page(report)
    assert page.errors == [] and page.requests == []  # nothing fails, nothing is fetched: one offline file
    assert page.title == f"genlab {family}: {family}"
    assert page.headings[1:] == SECTIONS
    pngs = sorted((report.parent / "figures").glob("*.png")) + sorted((report.parent / "samples").glob("*.png"))
    assert len(page.images) == len(pngs)
    bad = [i["alt"] for i in page.images if not (i["complete"] and i["width"] > 0 and i["height"] > 0)]
    assert bad == []
    shown = {i["alt"].split(":")[0] for i in page.images}
    assert {"final", "step_00000003", "loss", "curves", *OWN_FIGURES[family]} <= shown
    # the final metrics (the last training line and the end-of-run test), and the configuration
    assert "train\t6" in page.text and "test\t6" in page.text
    assert f"family: {family}" in page.text and "steps: 6" in page.text
    assert page.overflow == 0  # a wide metrics table scrolls by itself, the page does not
    assert blank_share(page.screenshot) < 0.97  # the first screen shows text, tables and images (MNIST-like: 0.85-0.94)
    assert Image.open(io.BytesIO(page.screenshot)).size == (1200, 900)


def test_the_browser_check_sees_a_broken_page(browser, tmp_path):
    """The checks above can fail: a broken image, a script error and a request for another file are caught."""
    page = tmp_path / "broken.html"
    page.write_text("<!doctype html><html><head><title>broken</title></head><body><h1>x</h1>"
                    "<img alt='bad' src='data:image/png;base64,iVBORw0KGgoAAAA'>"
                    "<img alt='missing' src='missing.png'><script>undefined_function()</script></body></html>")
    seen = browser.open_page(page)
    assert [i["width"] for i in seen.images] == [0, 0]
    assert any("undefined_function" in e for e in seen.errors)
    assert any(r.endswith("missing.png") for r in seen.requests)
    assert blank_share(seen.screenshot) > 0.99  # one letter on white
    wide = tmp_path / "wide.html"
    wide.write_text("<!doctype html><html><body><div style='width:3000px'>wide</div></body></html>")
    assert browser.open_page(wide).overflow > 0
