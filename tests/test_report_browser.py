"""The HTML reports in a real headless browser (Debian's Chromium): offline, every image resolves,
the summary and the ranking chart are there, nothing injected runs, and the page renders.

``make test`` installs Chromium when ``/usr/bin/chromium`` is missing; without a Chromium binary
this module is skipped, and the reason is printed in the test summary.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import fiberscope as fs
from fiberscope.analysis.synthetic import synthetic_fiber

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no Chromium binary (chromium, chromium-browser or google-chrome) on PATH: the browser test of the HTML "
    "report cannot run; `make test` installs it (apt-get install -y chromium), or install it yourself",
)

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--host-resolver-rules=MAP * ~NOTFOUND",  # nothing on the network resolves: the page must not need it
]

PROBE_SCRIPT = """<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var b = document.body;
  b.setAttribute('data-images', imgs.length);
  b.setAttribute('data-broken', imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); }).length);
  b.setAttribute('data-bars', document.querySelectorAll('svg.ranking rect').length);
  b.setAttribute('data-charts', document.querySelectorAll('svg.ranking').length);
  b.setAttribute('data-summaries', document.querySelectorAll('p.summary').length);
  b.setAttribute('data-remote', document.querySelectorAll(
    '[src^="http"], [href^="http"], link[rel=stylesheet], script[src], iframe').length);
  b.setAttribute('data-alerted', window.__alerted ? 1 : 0);
  b.setAttribute('data-done', 1);
});
window.alert = function () { window.__alerted = true; };
</script>"""


def _chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args],  # type: ignore[list-item]
        capture_output=True,
        text=True,
        timeout=180,
    )


def _load(page: Path, tmp: Path) -> dict[str, int]:
    """Open ``page`` (a copy with the probe script) and return the attributes the script set on <body>."""
    probed = tmp / f"probed-{page.name}"
    html = page.read_text()
    assert "<script" not in html.lower(), "the report itself must not run scripts"
    probed.write_text(html.replace("</body>", PROBE_SCRIPT + "</body>"))
    out = _chromium(["--virtual-time-budget=15000", "--dump-dom", probed.as_uri()], tmp / "profile-dom")
    body = re.search(r"<body([^>]*)>", out.stdout)
    assert body, f"chromium printed no DOM (rc {out.returncode}): {out.stderr[-2000:]}"
    attrs = dict(re.findall(r'data-([a-z]+)="(\d+)"', body.group(1)))
    assert attrs.get("done") == "1", f"the page did not finish loading: {body.group(0)[:300]}"
    return {k: int(v) for k, v in attrs.items()}


def _screenshot(page: Path, tmp: Path, name: str) -> np.ndarray:
    shot = tmp / f"{name}.png"
    out = _chromium(["--window-size=1100,2200", f"--screenshot={shot}", page.as_uri()], tmp / "profile-shot")
    assert shot.is_file(), f"no screenshot (rc {out.returncode}): {out.stderr[-2000:]}"
    return np.asarray(Image.open(shot).convert("RGB"))


@pytest.fixture(scope="module")
def queries():
    from fiberscope.zoo.evaluate import real_images

    grey, labels = real_images("mnist")
    colour, _ = real_images("colormnist")
    i = int((labels == 5).nonzero()[0])
    return grey[i : i + 1], colour[i : i + 1], grey[200:208]


def _fiber(query: torch.Tensor, images: torch.Tensor, prior: str) -> fs.FiberSamples:
    n = len(images)
    loss = torch.linspace(0.2, 1.6, n)
    return fs.FiberSamples(
        images=images,
        features=torch.zeros(n, 4),
        target=torch.zeros(1, 4),
        fiber_loss=loss,
        seeds=list(range(n)),
        config={"prior": {"name": prior}, "subject": {"name": "<b>subject</b>"}, "method": {"method": "ndtm"}},
        timings={"total": 2.0},
        counts={"forward_equivalents": 10.0},
        query=query,
        losses={"sq_l2": loss},
    )


def test_the_results_report_loads_offline_with_every_image_chart_and_summary(tmp_path, queries):
    from fiberscope.report.results import write_results_report

    grey, colour, _ = queries
    root = tmp_path / "results"
    recoloured = _fiber(colour, synthetic_fiber(colour, "colour", n=6, seed=2), "my-prior")
    recoloured.in_fiber = recoloured.fiber_loss <= 1.0
    recoloured.tolerance = 1.0
    recoloured.save(root / "recoloured")
    _fiber(grey, synthetic_fiber(grey, "translation", n=4), "my-prior").save(root / "<img src=x onerror=alert(1)>")
    page = write_results_report(root)
    html = page.read_text()
    assert "&lt;img src=x onerror=alert(1)&gt;" in html and "&lt;b&gt;subject&lt;/b&gt;" in html

    got = _load(page, tmp_path)
    assert got["images"] == 4 and got["broken"] == 0, got  # per fiber: the grid and the variation map
    assert got["charts"] == 2 and got["bars"] >= 2 * 9 and got["summaries"] == 2, got
    assert got["remote"] == 0 and got["alerted"] == 0, got
    assert "Samples vary most in colour" in html and "Samples vary most in position" in html
    assert "3 of 6 samples are in the fiber" in html and "no tolerance set" in html

    shot = _screenshot(page, tmp_path, "results")
    assert shot.shape[0] >= 2000 and shot.std() > 20  # a rendered page, not a blank one
    blue = ((shot[..., 2] > 150) & (shot[..., 0] < 90) & (shot[..., 1] > 90) & (shot[..., 1] < 140)).sum()
    assert blue > 500, "the ranking chart's bars are not on the screen"


def test_the_comparison_and_demo_style_pages_load_offline(tmp_path, queries):
    from fiberscope.analysis.compare import ComparisonResult
    from fiberscope.report.compare import write_comparison_report

    grey, _, bank = queries
    fibers = [[_fiber(grey, synthetic_fiber(grey, k, n=4), "builtin:none")] for k in ("rotation", "fine_detail")]
    invs = [[fs.probe_invariances(row[0], unguided=bank)] for row in fibers]
    cmp = ComparisonResult(
        names=["A<script>", "B&co"],
        queries=["five"],
        matrix=[[0.01, 3.2], [0.02, 0.015]],
        per_query=[[[0.01], [3.2]], [[0.02], [0.015]]],
        loss=[[[0.1], [30.0]], [[0.2], [0.1]]],
        nn_loss=[[10.0], [10.0]],
        invariances=invs,
        fibers=fibers,
        config={"prior": "builtin:none", "n": 4},
    )
    page = write_comparison_report(cmp, tmp_path / "compare.html")
    html = page.read_text()
    assert "A&lt;script&gt;" in html and "B&amp;co sees what A&lt;script&gt; ignores" in html
    got = _load(page, tmp_path)
    assert got["images"] == 1 + 2 * 2 and got["broken"] == 0, got  # the heatmap, then grid + variation per fiber
    assert got["charts"] == 2 and got["summaries"] == 2 and got["remote"] == 0 and got["alerted"] == 0, got
    assert "unguided prior samples" in html  # the chart's reference markers
    shot = _screenshot(page, tmp_path, "compare")
    assert shot.std() > 20
