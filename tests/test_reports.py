"""HTML reports: math as MathML, nothing fetched from the network, figures stored once, and the
landing page (``reports/index.html``) with studies and ``report.json`` reports in one table."""

from __future__ import annotations

import base64
import io
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output
from PIL import Image

from vae_utils import index_page, mathml, reports, results
from vae_utils.config import STUDY_NOTEBOOKS, TrainConfig

MB = 1024 * 1024


def png(width: int = 60, height: int = 40, colours: int = 4) -> bytes:
    """A small PNG with a few grey levels in vertical bands (RGBA, opaque, as matplotlib writes)."""
    image = Image.new("RGBA", (width, height), (255, 255, 255, 255))
    for x in range(width):
        level = 255 * (x * colours // width) // max(colours - 1, 1)
        for y in range(height):
            image.putpixel((x, y), (level, level, level, 255))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def figure_output(data: bytes = b"") -> nbformat.NotebookNode:
    return new_output(
        "display_data",
        data={
            "image/png": base64.b64encode(data or png()).decode("ascii"),
            "text/plain": "<Figure size 600x400 with 1 Axes>",
        },
    )


MARKDOWN = r"""# The bound

Inline: $\log p_\theta(\mathbf{x}) \ge \mathcal{L}$, with $\mathbf z \sim q_\phi(\mathbf z|\mathbf x)$ and
$\mathbb{E}_q[\boldsymbol\sigma \odot \boldsymbol\epsilon]$, $z_i = \Phi^{-1}(u_i)$, $\lVert x \rVert$.

$$\mathcal{L}(\theta,\phi;\mathbf{x}) = -D_{KL}\big(q\,\|\,p\big)
 + \frac1L\sum_{l=1}^{L}\log p(\mathbf{x}|\mathbf{z}^{(l)}) + \operatorname{tr}(\mathbf{W}) \tag{3}$$

$$\begin{aligned} a &= \text{first} \\ b &= \tfrac12 \end{aligned}$$
"""


def make_notebook(path: Path, source: str = "plt.plot([1, 2])", data: bytes = b"") -> Path:
    nb = new_notebook(
        cells=[
            new_markdown_cell(MARKDOWN),
            new_code_cell(
                source,
                outputs=[
                    new_output("stream", name="stdout", text="a price of $5 and $6\n"),
                    figure_output(data),
                ],
            ),
        ]
    )
    nb.metadata["language_info"] = {"name": "python"}
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


# ----------------------------------------------------------------------------- LaTeX -> MathML


def test_latex_to_mathml_renders_the_notebooks_constructs():
    inline = mathml.latex_to_mathml(
        r"\mathbf{x} \mathbf z \boldsymbol\sigma \mathcal{L} \mathbb{E} "
        r"\mathbf{0}"
    )
    assert inline.startswith('<math display="inline">') and "xmlns" not in inline
    assert "mathvariant" not in inline  # Chromium ignores it: Unicode mathematical letters instead
    for letter in "\U0001d431\U0001d433\U0001d748\u2112\U0001d53c\U0001d7ce":  # 𝐱 𝐳 𝝈 ℒ 𝔼 𝟎
        assert letter in inline
    assert "<mo>\u223c</mo>" in mathml.latex_to_mathml(r"z \sim q")  # \sim is a relation, not "~"
    assert '<mi mathvariant="normal">\u03a6</mi>' in mathml.latex_to_mathml(r"\Phi^{-1}(u)")  # upright
    log = mathml.latex_to_mathml(r"2 \log p + \operatorname{tr}(A)")
    assert '<mn>2</mn><mspace width="0.167em" /><mi>log</mi><mspace width="0.167em" /><mi>p</mi>' in log
    assert "<mi>tr</mi><mo" in log  # no space before its parenthesis
    tagged = mathml.latex_to_mathml(r"a = b \tag{3}", display=True)
    assert tagged.startswith('<span class="equation"><math display="block">')
    assert tagged.endswith('<span class="tag">(3)</span></span>') and "tag" not in tagged.split("</math>")[0]
    aligned = mathml.latex_to_mathml(r"\begin{aligned} a &= b \\ c &= d \end{aligned}", display=True)
    assert aligned.count("<mtr>") == 2 and "&amp;" not in aligned and "(1)" not in aligned
    assert mathml.latex_to_mathml(r"\frac{1}{") == r'<code class="tex-error">$\frac{1}{$</code>'


# ----------------------------------------------------------------------------- export


def test_export_html_is_offline_with_mathml(tmp_path):
    notebook = make_notebook(tmp_path / "reports" / "demo" / "01_demo.ipynb")
    page = reports.export_html(notebook)
    text = page.read_text(encoding="utf-8")
    assert page == notebook.with_suffix(".html")
    assert remote_resources(text) == []
    assert "<script" not in text and "mathjax" not in text.lower() and "require.js" not in text
    assert text.count("<math") == 7 and text.count('<math display="block"') == 2
    assert '<span class="tag">(3)</span>' in text and "\U0001d431" in text
    prose = re.sub(r"<pre>.*?</pre>", "", text, flags=re.S)
    assert "$" not in prose  # every formula converted; dollars in outputs are left alone:
    assert "a price of $5 and $6" in text
    assert "data:image/png;base64," in text
    link = re.search(r'<link rel="stylesheet" href="([^"]+)">', text).group(1)
    assert link == "../_static/jupyterlab.css" and (page.parent / link).is_file()
    assert len(text) < 40_000  # JupyterLab's 250 KB stylesheet is linked, not inlined


def test_export_finds_the_shared_folder_from_any_depth(tmp_path):
    (tmp_path / "reports" / reports.STATIC_DIR).mkdir(parents=True)
    page = reports.export_html(make_notebook(tmp_path / "reports" / "figure2" / "deep" / "06_figure2.ipynb"))
    assert '<link rel="stylesheet" href="../../_static/jupyterlab.css">' in page.read_text(encoding="utf-8")
    assert (tmp_path / "reports" / "_static" / "jupyterlab.css").is_file()


def test_remote_resources_finds_what_a_page_would_fetch():
    page = """<html><head><script src="https://cdn.example/require.js"></script>
    <link rel="stylesheet" href="//cdn.example/x.css"><link rel="stylesheet" href="../_static/a.css">
    <style>@import url("http://fonts.example/f.css"); .a {background: url(data:image/png;base64,AAA)}</style>
    </head><body><img src="HTTP://example.org/a.png"><img src="data:image/png;base64,AAA">
    <a href="https://arxiv.org/abs/1312.6114">a link is not fetched</a><script>var a = 1;</script>
    <math xmlns="http://www.w3.org/1998/Math/MathML"><mi>x</mi></math></body></html>"""
    assert remote_resources(page) == [
        "https://cdn.example/require.js",
        "//cdn.example/x.css",
        "http://fonts.example/f.css",
        "HTTP://example.org/a.png",
    ]


def test_shrink_png_is_exact_for_few_colours():
    original = png(200, 100, colours=8)
    smaller = reports.shrink_png(original)
    assert len(smaller) < len(original)
    a, b = Image.open(io.BytesIO(original)).convert("RGB"), Image.open(io.BytesIO(smaller)).convert("RGB")
    assert a.tobytes() == b.tobytes()


def test_finalize_report_exports_thumbnails_and_slims(tmp_path):
    notebook = make_notebook(
        tmp_path / "reports" / "study" / "05_latent_manifold.ipynb",
        source="plotting.plot_manifold(model, shape, grid_size)\nplt.show()",
        data=png(400, 300),
    )
    page = reports.finalize_report(notebook)
    assert "data:image/png;base64," in page.read_text(encoding="utf-8")
    thumbnail = Image.open(notebook.parent / reports.THUMBNAIL)
    assert thumbnail.size == (reports.THUMBNAIL_WIDTH, 120)
    nb = nbformat.read(notebook, as_version=4)
    output = nb.cells[1].outputs[1]
    assert "image/png" not in output.data and output.metadata["figure_in"] == "05_latent_manifold.html"
    assert output.data["text/plain"].endswith(
        "(figure removed from this copy of the notebook: see 05_latent_manifold.html)"
    )
    assert nb.metadata["vae_utils"] == {"figures_removed": 1, "html": "05_latent_manifold.html"}

    first = page.read_text(encoding="utf-8")
    assert reports.finalize_report(notebook) == page  # again: the figures come back from the HTML
    assert page.read_text(encoding="utf-8") == first
    assert nbformat.read(notebook, as_version=4) == nb
    page.unlink()
    with pytest.raises(ValueError, match="without its 1 figure"):
        reports.export_html(notebook)


def test_only_the_key_notebook_gets_a_thumbnail(tmp_path):
    reports.finalize_report(make_notebook(tmp_path / "reports" / "study" / "03_loss_curves.ipynb"))
    assert not (tmp_path / "reports" / "study" / reports.THUMBNAIL).exists()


# ----------------------------------------------------------------------------- committed reports


def committed_pages() -> list[Path]:
    return sorted(reports.REPORTS_DIR.rglob("*.html"))


@pytest.mark.parametrize("page", committed_pages(), ids=lambda p: str(p.relative_to(reports.REPORTS_DIR)))
def test_committed_reports_read_offline(page):
    text = page.read_text(encoding="utf-8")
    assert remote_resources(text) == [], "a stale report: re-export it with vae_utils.reports"
    for href in re.findall(r'<link[^>]*href="([^"]+)"', text) + re.findall(r'<img[^>]*src="([^":]+)"', text):
        assert (page.parent / href).is_file(), f"{page.name} refers to a missing {href}"


def test_committed_reports_stay_small():
    files = [p for p in reports.REPORTS_DIR.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 6 * MB  # 12 MB with two more reports of this size
    for notebook in reports.REPORTS_DIR.rglob("*.ipynb"):
        assert "image/png" not in notebook.read_text(encoding="utf-8"), f"{notebook}: figures stored twice"


# ----------------------------------------------------------------------------- the landing page


def fake_study(folder: Path) -> None:
    """A finished Gaussian-decoder study: study.json, history.csv, an executed 03 with the
    log-likelihood table and a 05 with the manifold figure (not slimmed yet)."""
    config = TrainConfig(decoder="gaussian", run_dir="runs/none").to_dict()
    folder.mkdir(parents=True)
    (folder / "study.json").write_text(
        json.dumps(
            {
                "name": "mnist_gaussian_z2_h500_s0",
                "quick": False,
                "overwrite": False,
                "resume": False,
                "options": {"decoder": "gaussian"},
                "config": config,
                "status": "complete",
                "started": "2026-11-26T02:14:03+00:00",
                "finished": "2026-11-26T02:37:07+00:00",
            }
        )
    )
    (folder / "history.csv").write_text(
        "epoch,train_elbo,test_elbo,test_kl,seconds\n1,800.0,790.5,4.0,60\n"
        "2,870.25,862.904,5.0,120\n3,880.0,850.0,5.5,180\n"
    )
    results.write_results(
        folder / results.RESULTS_FILE,
        "03_loss_curves",
        [results.result("log p(x), k=5000", 866.5, "importance sampling", datapoints=10000)],
    )
    manifold = new_notebook(
        cells=[new_code_cell("plotting.plot_manifold(model)", outputs=[figure_output(png(320, 320))])]
    )
    nbformat.write(manifold, folder / "05_latent_manifold.ipynb")
    for name in STUDY_NOTEBOOKS:
        (folder / f"{name}.html").write_text("<html></html>")


def test_index_lists_studies_and_reports_in_one_table(tmp_path):
    root = tmp_path / "reports"
    fake_study(root / "mnist_gaussian_z2_h500_s0")
    figure2 = root / "figure2"
    figure2.mkdir()
    (figure2 / "06_figure2.html").write_text("<html></html>")
    (figure2 / "06_figure2.ipynb").write_text("{}")
    Image.open(io.BytesIO(png(160, 100))).save(figure2 / "figure.png")
    (figure2 / "report.json").write_text(
        json.dumps(
            {
                "title": "Figure 2: ELBO against samples seen",
                "command": "python -m vae_utils.sweep figure2",
                "date": "2026-12-01 10:00",
                "headline": {"best test ELBO, N_z = 20": -101.234, "runs": 12, "budget": "cpu"},
                "thumbnail": "figure.png",
                "pages": ["06_figure2.html"],
            }
        )
    )
    (root / "_static").mkdir()
    (root / "_static" / "jupyterlab.css").write_text("body {}")

    page = index_page.write_index(root)
    text = page.read_text(encoding="utf-8")
    assert page == root / "index.html" and "_static" not in text
    assert text.count('<table class="reports">') == 1
    rows = [line for line in text.splitlines() if line.startswith('<tr class="report">')]
    assert len(rows) == 2 and "Figure 2" in rows[0] and "mnist_gaussian_z2_h500_s0" in rows[1]  # sorted

    study_row, figure_row = rows[1], rows[0]
    for name, value in (
        ("dataset", "mnist"),
        ("decoder", "gaussian"),
        ("N_z", "2"),
        ("epochs", "3"),
        ("best test ELBO", "862.90"),
        ("log p(x), k=5000", "866.50 (10,000 images)"),
    ):
        assert f"<tr><th>{name}</th><td>{value}</td></tr>" in study_row
    assert "<code>python -m vae_utils.study --decoder gaussian</code>" in study_row
    assert "2026-11-26 02:37" in study_row
    assert 'href="mnist_gaussian_z2_h500_s0/01_derivation.html"' in study_row
    assert "<tr><th>best test ELBO, N_z = 20</th><td>-101.23</td></tr>" in figure_row
    assert "<tr><th>runs</th><td>12</td></tr>" in figure_row
    assert "<code>python -m vae_utils.sweep figure2</code>" in figure_row and "2026-12-01 10:00" in figure_row
    assert 'href="figure2/06_figure2.html"' in figure_row
    # the details below the table show the headline's strings as text, not as Python literals
    assert "<caption>headline</caption>" in text and "<td>cpu</td>" in text and "'cpu'" not in text
    # and the study's configuration and results as config.json and results.json write them
    assert "<td>gaussian</td>" in text and "'gaussian'" not in text and "'mnist'" not in text
    assert "<td>null</td>" in text and "None" not in text and "<td>importance sampling</td>" in text

    thumbnails = re.findall(r'<img src="([^"]+)"', text)
    assert thumbnails == ["figure2/figure.png", "mnist_gaussian_z2_h500_s0/thumbnail.png"]
    assert all((root / src).is_file() for src in thumbnails)
    assert Image.open(root / thumbnails[1]).width == reports.THUMBNAIL_WIDTH
    assert 'href="figure2/06_figure2.ipynb"' in text  # the notebook beside a listed page
    assert remote_resources(text) == [] and "<script" not in text


def test_study_command_rebuilds_the_command_line():
    """The options, --quick and a name of one's own; never --resume or --overwrite, which change no
    number and would make a copied command replace the reader's own run."""
    config = TrainConfig(latent_dim=5, sigmoid_mean=True)
    record = {
        "name": config.name + "_quick",
        "quick": True,
        "config": config.to_dict(),
        "options": {"latent_dim": 5, "sigmoid_mean": True, "iw_subset": None},
    }
    assert index_page.study_command(record) == (
        "python -m vae_utils.study --latent-dim 5 --sigmoid-mean --iw-subset none --quick"
    )
    assert (
        index_page.study_command(
            {
                "name": "mnist_bernoulli_z2_h500_s0",
                "quick": False,
                "overwrite": True,
                "options": {},
                "config": TrainConfig().to_dict(),
            }
        )
        == "python -m vae_utils.study"
    )
    record = {
        "name": "by-hand",
        "resume": True,
        "config": TrainConfig().to_dict(),
        "options": {"sigmoid_mean": False, "run_dir": "runs/my run"},
    }
    assert index_page.study_command(record) == (
        "python -m vae_utils.study --no-sigmoid-mean --run-dir 'runs/my run' --name by-hand"
    )


# ----------------------------------------------------------------------------- results as data


def test_results_round_trip_and_headline(tmp_path):
    entries = [
        results.result("test NLL, k=5000: VAE", 92.834, "importance sampling", 10000, compare="Burda: 86.76"),
        results.result("best final test ELBO", -101.0, "ELBO"),
    ]
    assert results.write_results(None, "07_likelihoods", entries) is None  # run by hand: nothing written
    path = results.write_results(tmp_path / "r" / "results.json", "07_likelihoods", entries)
    assert path == tmp_path / "r" / "results.json"
    assert results.read_results(path.parent) == entries
    assert json.loads(path.read_text())["notebook"] == "07_likelihoods"
    assert results.headline(entries) == {
        "test NLL, k=5000: VAE": "92.83 (10,000 images; Burda: 86.76)",
        "best final test ELBO": "-101.00",
    }
    assert results.read_results(tmp_path) == []  # no results.json: no headline


def test_results_refuse_unfinished_numbers_and_foreign_files(tmp_path):
    with pytest.raises(ValueError, match=r"result 'log p\(x\)' = nan is invalid: allowed a finite number"):
        results.result("log p(x)", float("nan"), "importance sampling")
    (tmp_path / results.RESULTS_FILE).write_text('{"headline": {"a": 1}}')
    with pytest.raises(ValueError, match="results.json is not a results file"):
        results.read_results(tmp_path)


# ----------------------------------------------------------------------------- offline check


class _Fetched(HTMLParser):
    """What a page would fetch: script src, link href, img/iframe/source/embed src, object data,
    and ``url(...)`` / ``@import`` in style elements and attributes."""

    FETCHED = {
        "script": "src",
        "link": "href",
        "img": "src",
        "iframe": "src",
        "source": "src",
        "embed": "src",
        "audio": "src",
        "video": "src",
        "object": "data",
        "input": "src",
    }

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.urls: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list) -> None:
        attributes = dict(attrs)
        if self.FETCHED.get(tag) in attributes and attributes[self.FETCHED[tag]]:
            self.urls.append(attributes[self.FETCHED[tag]])
        if attributes.get("srcset"):
            self.urls.extend(part.split()[0] for part in attributes["srcset"].split(",") if part.strip())
        self._css(attributes.get("style") or "")
        self._in_style = tag == "style"

    def handle_endtag(self, tag: str) -> None:
        self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self._css(data)

    def _css(self, css: str) -> None:
        self.urls.extend(re.findall(r"""url\(\s*['"]?([^'")\s]+)""", css))
        self.urls.extend(re.findall(r"""@import\s+['"]([^'"]+)""", css))


def remote_resources(page: str) -> list[str]:
    """The URLs a page would fetch from the network to display (http, https or protocol-relative);
    an offline report has none. Links a reader may follow (``<a href>``) are not fetched."""
    collector = _Fetched()
    collector.feed(page)
    collector.close()
    return [url for url in collector.urls if re.match(r"(?i)\s*(https?:)?//", url)]
