"""Executed notebooks as HTML reports that read offline and stay small: nbconvert's lab template
with no script, math as MathML (:mod:`vae_utils.mathml`), figures as palette PNGs, one shared
stylesheet, and the figures removed from the ``.ipynb`` once the HTML holds them. docs/reports.md
has the details.
"""

from __future__ import annotations

import base64
import html
import io
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vae_utils.config import REPORTS_DIR
from vae_utils.mathml import MATH_CSS, latex_to_mathml

if TYPE_CHECKING:  # annotations only: nbconvert is imported when a page is exported
    from jinja2.runtime import Context
    from nbconvert import HTMLExporter
    from nbformat import NotebookNode

#: The folder, directly under the reports folder, with what every page shares (the stylesheet).
STATIC_DIR = "_static"
STYLESHEET = "jupyterlab.css"
#: A notebook's key figure: notebook name -> a piece of the source of the cell that draws it.
KEY_FIGURES = {
    "05_latent_manifold": "plot_manifold(",
    "06_figure2": "plot_figure2(",
    "08_figure3": "plot_figure3(curves)",
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


#: The lab template without anything fetched from the network, the math CSS instead of MathJax's
#: loader, and the shared stylesheet between markers (export_html swaps it for a link).
_TEMPLATE = (
    """{%- extends 'index.html.j2' -%}
{% block html_head_js %}{% endblock html_head_js %}
{% block jupyter_widgets %}{% endblock jupyter_widgets %}
{% block notebook_css %}<!--shared-css-->{{ super() }}<!--/shared-css-->{% endblock notebook_css %}
{% block html_head_js_mathjax %}"""
    + MATH_CSS
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
