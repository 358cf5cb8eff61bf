"""HTML reports that read offline and stay small, and the landing page ``reports/index.html``.

Math, offline. The markdown's LaTeX is converted to MathML when the HTML is written
(``latex2mathml``), and browsers draw MathML themselves (Chromium since 109, Firefox, Safari): a page
needs no script, no renderer files and no network. The alternative, a local copy of the MathJax 2.7.9
that ``jupyter-server-mathjax`` ships, was rejected: its only fonts are STIX-Web web fonts, which a
page opened from ``file://`` may not be allowed to load from a shared folder (browsers apply the
same-origin rule to web fonts, and a ``file://`` page has an opaque origin), it is a few MB of an
end-of-life renderer, and every page would depend on JavaScript. ``latex2mathml``'s gaps that the
notebooks hit are filled here (:func:`latex_to_mathml`): ``mathvariant`` styles (``\\boldsymbol``,
``\\mathbf z``), which Chromium's MathML Core ignores, become Unicode mathematical letters (𝐳, 𝝈);
``\\tag{n}`` becomes a right-aligned equation number; ``aligned`` and ``split`` become ``align*``;
``\\sim`` is the relation ∼; function names (``\\log``, ``\\operatorname{tr}``) get TeX's thin
spaces; capital Greek is upright. Automatic equation numbering (``align``, ``equation``) is not
reproduced: use ``\\tag``. A formula latex2mathml cannot convert is shown as its TeX source. MathML
is drawn with the reader's math font (Cambria Math on Windows, STIX Two Math on macOS, Latin Modern
Math or DejaVu Math TeX Gyre on Linux); without one, with ordinary fonts, where large brackets do
not stretch.

Nothing else is fetched either: nbconvert's lab template loads require.js, MathJax, the widget
manager and mermaid from CDNs; this exporter leaves them all out (the notebooks use none of them).

Small. JupyterLab's stylesheet (about 260 KB) is written once, to ``<reports>/_static/jupyterlab.css``,
and linked from every page instead of being inlined into each; figures are re-encoded as 256-colour
palette PNGs (:func:`shrink_png`: exact for most figures). After the HTML is written,
:func:`finalize_report` removes the figures from the executed ``.ipynb`` (they are in the HTML, and
the notebook says so where each one was), so that no image is stored twice. Such a slimmed notebook
can still be exported again (after a change to this module): :func:`export_html` takes its figures
back from the HTML it replaces. The two studies of November 2026 take 3.4 MB this way, 11.8 MB before.

The landing page. :func:`write_index` lists every report folder under ``reports/`` in one table:
its key figure as a thumbnail, its pages, its headline numbers, the date and the command that
produced it; details (results, configuration) follow. Two kinds of folder are recognised:

* a study (``python -m vae_utils.study``): a folder with ``study.json`` (or with notebooks only).
  Its headline is read from ``study.json``, ``history.csv`` and the executed ``03_loss_curves``
  (the importance-weighted log p(x)); its thumbnail, ``thumbnail.png``, is Figure 4 of
  ``05_latent_manifold`` (written by :func:`finalize_report`).
* any other report (a Figure 2 sweep, a likelihood table, ...): a folder with a ``report.json``::

      {"title": "Figure 2: ...",                       # shown as the report's name
       "command": "python -m vae_utils.sweep figure2", # how to make it again
       "date": "2026-12-01 10:00",                     # when it was made (any text)
       "headline": {"best test ELBO, N_z = 20": -101.2, "runs": 12},  # name -> value, in order
       "thumbnail": "thumbnail.png",                   # optional: an image in the folder, ~160 px wide
       "pages": ["06_figure2.html"]}                   # the folder's pages, linked in this order

  Only ``title`` and ``pages`` are needed; an ``.ipynb`` beside a page is linked too.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import re
import shlex
import unicodedata
from collections.abc import Iterable, Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import TYPE_CHECKING, Any
from xml.etree import ElementTree

from vae_utils.config import PROJECT_ROOT

if TYPE_CHECKING:  # annotations only: nbconvert is imported when a page is exported
    from jinja2.runtime import Context
    from nbconvert import HTMLExporter
    from nbformat import NotebookNode

REPORTS_DIR = PROJECT_ROOT / "reports"
#: The folder, directly under the reports folder, with what every page shares (the stylesheet).
STATIC_DIR = "_static"
STYLESHEET = "jupyterlab.css"
#: A study's notebooks, in order (the same as ``vae_utils.study.NOTEBOOKS``; reports.py sits below
#: study.py and does not import it).
STUDY_NOTEBOOKS = ("01_derivation", "02_train", "03_loss_curves", "04_reconstruction", "05_latent_manifold")
#: A notebook's key figure: notebook name -> a piece of the source of the cell that draws it.
KEY_FIGURES = {
    "05_latent_manifold": "plot_manifold(",
    "06_figure2": "plot_figure2(",
    "07_likelihoods": "plot_nll_trend(",
}
THUMBNAIL = "thumbnail.png"
THUMBNAIL_WIDTH = 160
#: The figures the HTML holds and :func:`slim_notebook` removes from the .ipynb (SVG stays: nbconvert
#: inlines it as markup, from which it could not be taken back).
_IMAGE_TYPES = ("image/png", "image/jpeg")
#: A figure output in nbconvert's lab HTML, in document order: its type and base64 data.
_HTML_FIGURE = re.compile(
    r'<div class="jp-RenderedImage[^"]*"[^>]*>\s*<img[^>]*?'
    r'src="data:(image/(?:png|jpeg));base64,([^"]+)"'
)


# ----------------------------------------------------------------------------- LaTeX -> MathML

_TAG = re.compile(r"\\tag\*?\{([^{}]*)\}")
_SIM = re.compile(r"\\sim(?![a-zA-Z])")  # latex2mathml makes \sim an identifier "~"; \thicksim is U+223C
_ENVIRONMENTS = re.compile(r"\\(begin|end)\{(aligned|split|align)\}")  # -> align*, which it knows
_NAMESPACE = ' xmlns="http://www.w3.org/1998/Math/MathML"'
_ROWS = {"math", "mrow", "mtd", "mstyle", "msqrt", "mpadded", "mphantom", "menclose", "merror"}
_SCRIPTS = {"msub", "msup", "msubsup", "munder", "mover", "munderover"}
_NEGATIVE_SPACES = {
    "negativeveryverythinmathspace": "-0.0556em",
    "negativeverythinmathspace": "-0.111em",
    "negativethinmathspace": "-0.167em",
    "negativemediummathspace": "-0.222em",
    "negativethickmathspace": "-0.278em",
}
#: MathML mathvariant -> the style's words in the names of Unicode's mathematical letters.
_VARIANT_NAMES = {
    "bold": "BOLD",
    "italic": "ITALIC",
    "bold-italic": "BOLD ITALIC",
    "script": "SCRIPT",
    "bold-script": "BOLD SCRIPT",
    "double-struck": "DOUBLE-STRUCK",
    "fraktur": "FRAKTUR",
    "bold-fraktur": "BOLD FRAKTUR",
    "sans-serif": "SANS-SERIF",
    "bold-sans-serif": "SANS-SERIF BOLD",
    "sans-serif-italic": "SANS-SERIF ITALIC",
    "sans-serif-bold-italic": "SANS-SERIF BOLD ITALIC",
    "monospace": "MONOSPACE",
}
_LETTERLIKE = {
    ("italic", "h"): "\u210e",
    ("fraktur", "C"): "\u212d",
    ("fraktur", "H"): "\u210c",
    ("fraktur", "I"): "\u2111",
    ("fraktur", "R"): "\u211c",
    ("fraktur", "Z"): "\u2128",
}


def _styled_char(char: str, variant: str) -> str | None:
    """``char`` in a mathvariant style as a Unicode mathematical letter or digit, or None."""
    if (variant, char) in _LETTERLIKE:
        return _LETTERLIKE[variant, char]
    name = unicodedata.name(char, "")
    for word in ("LATIN ", "GREEK ", " LETTER", "LUNATE "):
        name = name.replace(word, "")
    for candidate in (f"MATHEMATICAL {_VARIANT_NAMES[variant]} {name}", f"{_VARIANT_NAMES[variant]} {name}"):
        try:
            return unicodedata.lookup(candidate)
        except KeyError:
            pass
    return None


def _is_function(element: ElementTree.Element) -> bool:
    """A function name as latex2mathml writes it (``\\log``: <mi>log</mi>; ``\\operatorname{tr}``:
    <mo>tr</mo>), alone or as the base of a sub/superscript."""
    if element.tag in _SCRIPTS and len(element):
        element = element[0]
    return (
        element.tag in ("mi", "mo")
        and not element.attrib
        and re.fullmatch(r"[A-Za-z]{2,}", element.text or "") is not None
    )


def _polish(root: ElementTree.Element) -> None:
    """Make latex2mathml's MathML render as TeX would in browsers that implement MathML Core.

    * ``mathvariant`` (``\\boldsymbol``, ``\\mathbf z``), which MathML Core ignores but for
      ``normal``, becomes Unicode mathematical letters (𝐳, 𝝈);
    * upper-case Greek is upright, as in TeX;
    * a function name (``\\log``, ``\\operatorname{tr}``) is an identifier with TeX's thin space on
      either side (none next to an operator, none before an opening parenthesis or bracket);
    * ``\\big(`` and friends take no operator spacing; named negative spaces (``\\!``) get a length.
    """
    for element in root.iter():
        variant = element.get("mathvariant")
        if variant in _VARIANT_NAMES and element.text:
            styled = [_styled_char(c, variant) for c in element.text]
            if None not in styled:
                element.text = "".join(s for s in styled if s)
                del element.attrib["mathvariant"]
        if element.tag == "mi" and not element.attrib and re.fullmatch("[\u0391-\u03a9]", element.text or ""):
            element.set("mathvariant", "normal")
        if element.tag == "mo" and element.get("minsize"):
            element.set("lspace", "0em")
            element.set("rspace", "0em")
        if element.tag == "mspace" and element.get("width") in _NEGATIVE_SPACES:
            element.set("width", _NEGATIVE_SPACES[element.get("width", "")])
    for row in [e for e in root.iter() if e.tag in _ROWS]:
        children, rebuilt = list(row), []
        for i, child in enumerate(children):
            if not _is_function(child):
                rebuilt.append(child)
                continue
            (child[0] if child.tag in _SCRIPTS else child).tag = "mi"
            after = children[i + 1] if i + 1 < len(children) else None
            if rebuilt and rebuilt[-1].tag not in ("mo", "mspace"):
                rebuilt.append(ElementTree.Element("mspace", width="0.167em"))
            rebuilt.append(child)
            if after is not None and after.tag not in ("mo", "mspace"):
                rebuilt.append(ElementTree.Element("mspace", width="0.167em"))
        row[:] = rebuilt


def latex_to_mathml(tex: str, display: bool = False) -> str:
    """The LaTeX formula ``tex`` (without its ``$`` delimiters) as an HTML ``<math>`` element.

    A display formula with ``\\tag{n}`` is wrapped with its number on the right. A formula that
    cannot be converted comes back as its escaped source in ``<code class="tex-error">``.
    """
    from latex2mathml.converter import convert

    tag = _TAG.search(tex)
    body = _SIM.sub(r"\\thicksim", _TAG.sub("", tex))
    body = _ENVIRONMENTS.sub(lambda m: f"\\{m.group(1)}{{align*}}", body)
    try:
        mathml = convert(body.strip(), display="block" if display else "inline")
        mathml = mathml.replace(_NAMESPACE, "").replace("<mi>&</mi>", "<mi>&amp;</mi>")
        root = ElementTree.fromstring(mathml)
    except Exception:  # latex2mathml raises a variety of errors on what it does not know
        delimiter = "$$" if display else "$"
        return f'<code class="tex-error">{html.escape(delimiter + tex + delimiter)}</code>'
    _polish(root)
    mathml = ElementTree.tostring(root, encoding="unicode")
    if display and tag:
        return f'<span class="equation">{mathml}<span class="tag">({html.escape(tag.group(1))})</span></span>'
    return mathml


#: Inline CSS of every page: the equation numbers, and math that does not overflow the page.
_MATH_CSS = """<style type="text/css">
math {font-family: math, "STIX Two Math", "Cambria Math", "Latin Modern Math", "DejaVu Math TeX Gyre", serif;
      font-size: 1.1em}
.jp-RenderedMarkdown math[display="block"] {margin: 0.6em 0; overflow-x: auto; overflow-y: hidden}
.equation {display: flex; align-items: center}
.equation > math {flex: 1}
.equation > .tag {padding-left: 1em}
code.tex-error {color: #a00}
mtd[columnalign="right"] {text-align: right; padding-right: 0}
mtd[columnalign="left"] {text-align: left; padding-left: 0}
</style>"""

#: The lab template without anything fetched from the network, the math CSS instead of MathJax's
#: loader, and the shared stylesheet between markers (export_html swaps it for a link).
_TEMPLATE = (
    """{%- extends 'index.html.j2' -%}
{% block html_head_js %}{% endblock html_head_js %}
{% block jupyter_widgets %}{% endblock jupyter_widgets %}
{% block notebook_css %}<!--shared-css-->{{ super() }}<!--/shared-css-->{% endblock notebook_css %}
{% block html_head_js_mathjax %}"""
    + _MATH_CSS
    + """{% endblock html_head_js_mathjax %}
{% block html_head_js_mermaidjs %}{% endblock html_head_js_mermaidjs %}
{% block data_latex scoped %}
<div class="jp-RenderedLatex jp-OutputArea-output {{ extra_class }}" data-mime-type="text/latex">
{{ output.data['text/latex'] | markdown2html }}
</div>
{%- endblock data_latex %}
"""
)
_SHARED_CSS = re.compile(r"<!--shared-css-->(.*?)<!--/shared-css-->", re.S)


def _exporter() -> HTMLExporter:
    """nbconvert's HTMLExporter (lab template, code shown) with :data:`_TEMPLATE` and MathML math."""
    from jinja2 import DictLoader, pass_context
    from nbconvert import HTMLExporter
    from nbconvert.filters.markdown_mistune import IPythonRenderer, MarkdownWithMath

    class MathMLRenderer(IPythonRenderer):
        def block_math(self, body: str) -> str:
            return latex_to_mathml(body, display=True)

        def inline_math(self, body: str) -> str:
            return latex_to_mathml(body)

        def latex_environment(self, name: str, body: str) -> str:
            if name.rstrip("*") in ("equation", "displaymath"):
                return latex_to_mathml(body, display=True)
            return latex_to_mathml(
                f"\\begin{{{name.rstrip('*')}*}}{body}\\end{{{name.rstrip('*')}*}}", display=True
            )

    class OfflineHTMLExporter(HTMLExporter):
        @pass_context  # as HTMLExporter's markdown2html, with the MathML renderer
        def markdown2html(self, context: Context, source: str) -> str:
            cell = context.get("cell", {})
            renderer = MathMLRenderer(
                escape=False,
                attachments=cell.get("attachments", {}),
                embed_images=self.embed_images,
                path=context.get("resources", {}).get("metadata", {}).get("path", ""),
                anchor_link_text=self.anchor_link_text,
                exclude_anchor_links=self.exclude_anchor_links,
                **self.lexer_options,
            )
            return MarkdownWithMath(renderer=renderer).render(source)

    return OfflineHTMLExporter(
        template_name="lab",
        template_file="offline.html.j2",
        extra_loaders=[DictLoader({"offline.html.j2": _TEMPLATE})],
    )


# ----------------------------------------------------------------------------- exporting


def reports_root(path: Path) -> Path:
    """The reports folder a page belongs to: the nearest folder above ``path`` that already has
    ``_static/`` or is the project's ``reports/``; otherwise the folder above the page's folder
    (a report folder sits directly in the reports folder: ``reports/<name>/<page>``)."""
    path = Path(path).resolve()
    for parent in path.parents:
        if (parent / STATIC_DIR).is_dir() or parent == REPORTS_DIR.resolve():
            return parent
    return path.parent.parent


def shrink_png(data: bytes) -> bytes:
    """The image as a smaller PNG: a 256-colour palette image, exact when the image has at most 256
    colours (MNIST grids, most plots) and a median-cut palette otherwise (anti-aliased or
    alpha-blended plots: no visible change, about a third of the size); the original when no
    candidate is smaller."""
    from PIL import Image, ImageChops

    image: Image.Image = Image.open(io.BytesIO(data))
    image.load()
    if image.mode not in ("RGB", "RGBA", "L"):
        return data
    if image.mode == "RGBA" and image.getchannel("A").getextrema() == (255, 255):
        image = image.convert("RGB")
    candidates = [image]
    if image.mode in ("RGB", "L"):
        palette = image.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
        exact = ImageChops.difference(palette.convert(image.mode), image).getbbox() is None
        if exact or image.getcolors(256) is None:
            candidates.insert(0, palette)
    best = data
    for candidate in candidates:
        out = io.BytesIO()
        candidate.save(out, "PNG", optimize=True)
        if len(out.getvalue()) < len(best):
            best = out.getvalue()
    return best


def _image_outputs(nb: NotebookNode) -> Iterable[tuple[Any, Any]]:
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            if any(mime in output.get("data", {}) for mime in _IMAGE_TYPES):
                yield cell, output


def export_html(notebook_path: Path) -> Path:
    """Write ``<notebook>.html`` beside the notebook and return its path.

    nbconvert's lab template with the code shown, figures inlined (re-encoded by
    :func:`shrink_png`), math as MathML, no script, and the stylesheet linked from
    ``<reports>/_static/jupyterlab.css`` (see :func:`reports_root`), which is written if missing
    or different. A notebook :func:`slim_notebook` slimmed takes its figures back from the HTML it
    replaces (``ValueError`` if that HTML is missing or does not hold them), so a report can be
    exported again without re-executing it.
    """
    import nbformat

    notebook_path = Path(notebook_path)
    nb = nbformat.read(notebook_path, as_version=4)
    if nb.metadata.get("vae_utils", {}).get("figures_removed"):
        _restore_figures(nb, notebook_path.with_suffix(".html"))
    for _, output in _image_outputs(nb):
        if "image/png" in output.data:
            png = shrink_png(base64.b64decode(output.data["image/png"]))
            output.data["image/png"] = base64.b64encode(png).decode("ascii")
    body, _ = _exporter().from_notebook_node(nb, resources={"metadata": {"name": notebook_path.stem}})
    match = _SHARED_CSS.search(body)
    if match:
        css = "\n".join(re.findall(r"<style[^>]*>(.*?)</style>", match.group(1), re.S)).strip() + "\n"
        stylesheet = reports_root(notebook_path) / STATIC_DIR / STYLESHEET
        stylesheet.parent.mkdir(parents=True, exist_ok=True)
        if not stylesheet.is_file() or stylesheet.read_text(encoding="utf-8") != css:
            stylesheet.write_text(css, encoding="utf-8")
        href = Path(os.path.relpath(stylesheet, notebook_path.resolve().parent)).as_posix()
        link = f'<link rel="stylesheet" href="{html.escape(href)}">'
        body = body[: match.start()] + link + body[match.end() :]
    out = notebook_path.with_suffix(".html")
    out.write_text(body, encoding="utf-8")
    return out


def _figure_note(page: str) -> str:
    return f"(figure removed from this copy of the notebook: see {page})"


def _restore_figures(nb: Any, page: Path) -> None:
    """Put back, in memory, the figures :func:`slim_notebook` removed, from the HTML ``page``."""
    slimmed = [
        output
        for cell in nb.cells
        for output in cell.get("outputs", [])
        if "figure_in" in output.get("metadata", {})
    ]
    figures = _HTML_FIGURE.findall(page.read_text(encoding="utf-8")) if page.is_file() else []
    if len(figures) != len(slimmed):
        raise ValueError(
            f"{page.with_suffix('.ipynb')} is a copy without its {len(slimmed)} figure(s), and "
            f"{page} holds {len(figures)}: re-execute the notebook to export it again"
        )
    for output, (mime, data) in zip(slimmed, figures, strict=True):
        output.data[mime] = data
        text = output.data.get("text/plain", "").replace(_figure_note(output.metadata.pop("figure_in")), "")
        output.data["text/plain"] = text.rstrip("\n")


def slim_notebook(notebook_path: Path) -> int:
    """Remove the figures from an executed notebook whose HTML holds them; return how many.

    Each figure's plain-text output says where the figure is, its metadata has ``figure_in``, and
    the notebook's metadata (``vae_utils.figures_removed``, ``vae_utils.html``) records it, so
    that :func:`export_html` can take the figures back from the HTML.
    """
    import nbformat

    notebook_path = Path(notebook_path)
    nb = nbformat.read(notebook_path, as_version=4)
    page = notebook_path.with_suffix(".html").name
    removed = 0
    for _, output in _image_outputs(nb):
        for mime in _IMAGE_TYPES:
            output.data.pop(mime, None)
        output.data["text/plain"] = (output.data.get("text/plain", "") + "\n" + _figure_note(page)).strip()
        output.metadata["figure_in"] = page
        removed += 1
    if removed:
        meta = nb.metadata.setdefault("vae_utils", {})
        meta["figures_removed"] = meta.get("figures_removed", 0) + removed
        meta["html"] = page
        nbformat.write(nb, notebook_path)
    return removed


def write_thumbnail(notebook_path: Path, marker: str, width: int = THUMBNAIL_WIDTH) -> Path | None:
    """Save the first PNG of the first cell whose source contains ``marker``, scaled to ``width``
    pixels, as ``thumbnail.png`` beside the notebook; None when there is no such figure."""
    import nbformat
    from PIL import Image

    nb = nbformat.read(notebook_path, as_version=4)
    for cell, output in _image_outputs(nb):
        if marker in cell.source and "image/png" in output.data:
            image = Image.open(io.BytesIO(base64.b64decode(output.data["image/png"]))).convert("RGB")
            height = max(1, round(image.height * width / image.width))
            image = image.resize((width, height), Image.Resampling.LANCZOS)
            out = Path(notebook_path).parent / THUMBNAIL
            image.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(out, "PNG", optimize=True)
            return out
    return None


def finalize_report(notebook_path: Path) -> Path:
    """After a notebook ran: export its HTML, save its key figure's thumbnail
    (:data:`KEY_FIGURES`), then remove the figures from the ``.ipynb``. Returns the HTML's path."""
    notebook_path = Path(notebook_path)
    page = export_html(notebook_path)
    if notebook_path.stem in KEY_FIGURES:
        write_thumbnail(notebook_path, KEY_FIGURES[notebook_path.stem])
    slim_notebook(notebook_path)
    return page


class _Collector(HTMLParser):
    """Collects what a page would fetch: script src, link href, img/iframe/source/embed src,
    object data, and ``url(...)`` / ``@import`` in style elements and attributes."""

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
    collector = _Collector()
    collector.feed(page)
    collector.close()
    return [url for url in collector.urls if re.match(r"(?i)\s*(https?:)?//", url)]


# ----------------------------------------------------------------------------- reading a study


def study_results(folder: Path, record: dict) -> dict:
    """Key results from the study's ``history.csv`` (its copy in ``folder``, else the run's)."""
    import pandas as pd

    candidates = [folder / "history.csv"]
    if record.get("config", {}).get("run_dir"):
        from vae_utils.config import resolve_path

        candidates.append(resolve_path(record["config"]["run_dir"]) / "history.csv")
    for path in candidates:
        if path.is_file():
            history = pd.read_csv(path)
            if history.empty:
                return {}
            best = history[history["test_elbo"] == history["test_elbo"].max()].iloc[0]  # as idxmax
            return {
                "epochs run": int(history["epoch"].max()),
                "best epoch": int(best["epoch"]),
                "best test ELBO": round(float(best["test_elbo"]), 2),
                "train ELBO at best": round(float(best["train_elbo"]), 2),
                "test KL at best": round(float(best["test_kl"]), 2),
                "training time": f"{float(history['seconds'].max()) / 60:.1f} min",
            }
    return {}


class _Tables(HTMLParser):
    """The text of every cell of every row of the HTML tables in a page (a DataFrame's HTML)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.rows: list[list[str]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self.rows:
            self.rows[-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def _read_notebook(path: Path) -> Any:
    """The notebook at ``path``, or None when it is missing or not a readable notebook."""
    import nbformat

    try:
        return nbformat.read(path, as_version=4) if Path(path).is_file() else None
    except Exception:  # a truncated or hand-made file: nbformat raises JSON and schema errors
        return None


def _html_tables(path: Path, needle: str) -> Iterator[list[list[str]]]:
    """The rows (cell texts) of each HTML table among the outputs of the notebook at ``path``
    whose HTML contains ``needle``, in order; nothing when the notebook is missing or unreadable."""
    nb = _read_notebook(path)
    for cell in nb.cells if nb else []:
        for output in cell.get("outputs", []):
            page = output.get("data", {}).get("text/html", "")
            if needle in page:
                parser = _Tables()
                parser.feed(page)
                yield parser.rows


def log_likelihood(folder: Path) -> dict:
    """The importance-weighted log p(x) from the folder's executed ``03_loss_curves.ipynb``:
    ``{"log p(x), k=5000": -148.99, "test images": 10000}``, or {} when it is not there.

    It is the table ``plotting.likelihood_summary`` made (a column ``log p(x), k=<k>``), first row.
    """
    for rows in _html_tables(Path(folder) / "03_loss_curves.ipynb", "log p(x), k="):
        header = next((row for row in rows if any(c.startswith("log p(x), k=") for c in row)), None)
        body = [row for row in rows if header and len(row) == len(header) and row is not header]
        if header is None or not body:
            continue
        values = dict(zip(header, body[0], strict=True))
        key = next(c for c in header if c.startswith("log p(x), k="))
        try:
            result: dict = {key: float(values[key])}
            if values.get("images"):
                result["test images"] = int(float(values["images"]))
        except ValueError:
            continue
        return result
    return {}


def table_value(path: Path, column: str, row: str) -> float | None:
    """The number in column ``column`` of the row labelled ``row`` (a DataFrame's index label, the
    row's first cell) of the first table among the outputs of the notebook at ``path`` that has
    both; None when no table has them or the cell is not a number."""
    for rows in _html_tables(path, column):
        header = next((r for r in rows if column in r), None)
        match = next((r for r in rows if header and len(r) == len(header) and r[0] == row), None)
        if header is not None and match is not None:
            try:
                return float(match[header.index(column)])
            except ValueError:
                return None
    return None


def study_command(record: dict) -> str:
    """The command that made a study, from its ``study.json``: ``python -m vae_utils.study
    --decoder gaussian``. ``--name`` is given only when it is not the configuration's own name."""
    parts = ["python", "-m", "vae_utils.study"]
    for option, value in (record.get("options") or {}).items():
        flag = "--" + option.replace("_", "-")
        if isinstance(value, bool):
            parts.append(flag if value else "--no-" + option.replace("_", "-"))
        else:
            parts += [flag, "none" if value is None else str(value)]
    parts += ["--" + mode for mode in ("quick", "resume", "overwrite") if record.get(mode) is True]
    name = record.get("name")
    if name and name != _default_name(record):
        parts += ["--name", name]
    return " ".join(shlex.quote(part) for part in parts)


def _default_name(record: dict) -> str | None:
    import dataclasses

    from vae_utils.config import TrainConfig

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    try:
        config = TrainConfig(**{k: v for k, v in (record.get("config") or {}).items() if k in fields})
    except (TypeError, ValueError):
        return None
    return config.name + ("_quick" if record.get("quick") else "")


# ----------------------------------------------------------------------------- the landing page


def write_index(reports_dir: Path = REPORTS_DIR) -> Path:
    """Write ``reports_dir/index.html``: one table of every report folder (thumbnail, pages,
    headline, date, command), then each folder's details. Plain HTML and inline CSS, no script.

    A folder is listed when it has a ``report.json`` (see the module's docstring), a
    ``study.json``, or notebooks; folders whose name starts with ``_`` or ``.`` are not.
    """
    reports_dir = Path(reports_dir)
    folders = (
        sorted(
            p
            for p in reports_dir.iterdir()
            if p.is_dir() and not p.name.startswith(("_", ".")) and (_is_report(p) or _is_study(p))
        )
        if reports_dir.is_dir()
        else []
    )
    rows, sections = [], []
    for folder in folders:
        entry = _report_entry(folder) if _is_report(folder) else _study_entry(folder)
        rows.append(_summary_row(folder, entry))
        sections.append(
            f'<section id="{html.escape(folder.name)}"><h2>{html.escape(entry["title"])}</h2>'
            f"{entry['details']}</section>\n"
        )
    head = _row(["figure", "report", "headline", "date", "command"], "th")
    table = f'<table class="reports"><thead>{head}</thead><tbody>\n{"".join(rows)}</tbody></table>\n'
    page = (
        _INDEX_HEAD
        + (
            table + "".join(sections)
            if folders
            else "<p>No report yet: run <code>python -m vae_utils.study</code>.</p>"
        )
        + "</body></html>\n"
    )
    reports_dir.mkdir(parents=True, exist_ok=True)
    (reports_dir / "index.html").write_text(page, encoding="utf-8")
    return reports_dir / "index.html"


def _summary_row(folder: Path, entry: dict) -> str:
    """One line of the landing page's table: ``<tr class="report">...</tr>``."""
    thumbnail = ""
    if entry["thumbnail"] and (folder / entry["thumbnail"]).is_file():
        src = html.escape(f"{folder.name}/{entry['thumbnail']}")
        thumbnail = f'<img src="{src}" width="{THUMBNAIL_WIDTH}" alt="{html.escape(entry["alt"])}">'
        if entry["figure_page"]:
            thumbnail = f'<a href="{html.escape(entry["figure_page"])}">{thumbnail}</a>'
    title = (
        f'<a href="#{html.escape(folder.name)}">{html.escape(entry["title"])}</a>'
        + (f"<br><small>{html.escape(entry['note'])}</small>" if entry["note"] else "")
        + f'<br><span class="pages">{entry["short_links"]}</span>'
    )
    headline = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_format(v))}</td></tr>"
        for k, v in entry["headline"].items()
    )
    command = f"<code>{html.escape(entry['command'])}</code>" if entry["command"] else ""
    cells = [
        thumbnail,
        title,
        f'<table class="headline">{headline}</table>' if headline else "",
        html.escape(entry["date"]),
        command,
    ]
    return '<tr class="report">' + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>\n"


def _study_entry(folder: Path) -> dict:
    record = _read_record(folder)
    config, results = record.get("config", {}), study_results(folder, record)
    likelihood = log_likelihood(folder)
    headline: dict = {
        "dataset": config.get("dataset"),
        "decoder": config.get("decoder"),
        "N_z": config.get("latent_dim"),
        "epochs": results.get("epochs run"),
        "best test ELBO": results.get("best test ELBO"),
    }
    headline.update({k: v for k, v in likelihood.items() if k.startswith("log p(x)")})
    if likelihood.get("test images"):
        headline["log p(x) on"] = f"{likelihood['test images']:,} test images"
    status = record.get("failure") or record.get("status", "no study.json")
    if not (folder / THUMBNAIL).is_file() and _read_notebook(folder / "05_latent_manifold.ipynb"):
        write_thumbnail(folder / "05_latent_manifold.ipynb", KEY_FIGURES["05_latent_manifold"])
    links = "".join(f"<li>{_links(folder, nb)}</li>" for nb in STUDY_NOTEBOOKS)
    details = (
        f"<p>status: {html.escape(status)}</p><ol>{links}</ol>"
        + (_table("results", {**results, **likelihood}) if results or likelihood else "")
        + (_table("configuration", config) if config else "")
    )
    short = " · ".join(
        f'<a href="{html.escape(folder.name)}/{nb}.html">{nb[:2]}</a>'
        for nb in STUDY_NOTEBOOKS
        if (folder / f"{nb}.html").is_file()
    )
    return {
        "title": folder.name + (" (quick)" if record.get("quick") else ""),
        "note": "" if status == "complete" else status,
        "headline": {k: v for k, v in headline.items() if v is not None},
        "date": _date(record.get("finished") or record.get("started") or ""),
        "command": study_command(record) if record else "",
        "thumbnail": THUMBNAIL,
        "alt": "Figure 4: the learned manifold, decoded on a grid of the latent space",
        "figure_page": f"{folder.name}/05_latent_manifold.html",
        "short_links": short,
        "details": details,
    }


def _report_entry(folder: Path) -> dict:
    try:
        info = json.loads((folder / "report.json").read_text())
    except (OSError, ValueError):
        info = {}
    pages = [str(p) for p in info.get("pages", [])]
    links = []
    for page in pages:
        parts = [f'<a href="{html.escape(folder.name)}/{html.escape(page)}">{html.escape(page)}</a>']
        notebook = Path(page).with_suffix(".ipynb")
        if (folder / notebook).is_file() and notebook.as_posix() != page:
            href = html.escape(f"{folder.name}/{notebook.as_posix()}")
            parts.append(f'<a href="{href}">.ipynb</a>')
        missing = "" if (folder / page).is_file() else " (missing)"
        links.append("<li>" + " | ".join(parts) + missing + "</li>")
    headline = {k: v for k, v in dict(info.get("headline") or {}).items() if v is not None}
    short = " · ".join(
        f'<a href="{html.escape(f"{folder.name}/{p}")}">{html.escape(Path(p).stem)}</a>'
        for p in pages
        if (folder / p).is_file()
    )
    return {
        "title": str(info.get("title") or folder.name),
        "note": "" if info else "report.json unreadable",
        "headline": headline,
        "date": str(info.get("date") or ""),
        "command": str(info.get("command") or ""),
        "thumbnail": info.get("thumbnail"),
        "alt": f"{info.get('title') or folder.name}: key figure",
        "figure_page": f"{folder.name}/{pages[0]}" if pages else "",
        "short_links": short,
        "details": f"<ol>{''.join(links)}</ol>"
        + (_table("headline", headline, quote=False) if headline else ""),
    }


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def _date(iso: str) -> str:
    return iso[:16].replace("T", " ")


_INDEX_HEAD = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>VAE study reports</title>
<style>body{font-family:sans-serif;max-width:75em;margin:2em auto;padding:0 1em;line-height:1.4}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.2em .6em;text-align:left;
vertical-align:top}th{background:#f3f3f3}section{margin-top:2em}caption{text-align:left;font-weight:bold}
table.headline td,table.headline th{border:none;padding:0 .5em 0 0;background:none;font-weight:normal}
table.headline th{color:#555}table.reports img{display:block}code{font-size:.9em}
.pages a{margin-right:.2em}</style></head>
<body><h1>Auto-Encoding Variational Bayes (Kingma &amp; Welling): reports</h1>
<p>Every report below was made headless by the command beside it (a study by
<code>python -m vae_utils.study</code>: the five notebooks of <code>notebooks/</code>, executed). Each page
reads offline; the executed <code>.ipynb</code> beside it keeps the code and the text outputs, its figures
are in the HTML.</p>
"""


def _is_report(folder: Path) -> bool:
    return (folder / "report.json").is_file()


def _is_study(folder: Path) -> bool:
    return (folder / "study.json").is_file() or any(folder.glob("*.ipynb")) or any(folder.glob("*.html"))


def _read_record(folder: Path) -> dict:
    try:
        return json.loads((folder / "study.json").read_text())
    except (OSError, ValueError):
        return {}


def _links(folder: Path, notebook: str) -> str:
    parts = [
        f'<a href="{html.escape(folder.name)}/{notebook}{suffix}">{label}</a>'
        for suffix, label in ((".html", notebook), (".ipynb", ".ipynb"))
        if (folder / f"{notebook}{suffix}").is_file()
    ]
    return " | ".join(parts) if parts else f"{notebook} (not run)"


def _row(cells: Iterable[object], tag: str = "td") -> str:
    return "<tr>" + "".join(f"<{tag}>{c}</{tag}>" for c in cells) + "</tr>"


def _table(caption: str, values: dict, quote: bool = True) -> str:
    """A two-column table; ``quote`` shows strings and None as Python writes them (configurations),
    otherwise as plain text (headlines)."""
    rows = "".join(
        _row(
            [
                html.escape(str(k)),
                html.escape(repr(v) if quote and (isinstance(v, str) or v is None) else str(v)),
            ]
        )
        for k, v in values.items()
    )
    return f"<table><caption>{caption}</caption>{rows}</table>"
