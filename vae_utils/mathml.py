"""LaTeX to MathML, so that a report's equations draw offline with no script: the markdown's math
is converted when the HTML is written, and browsers draw MathML themselves. latex2mathml's gaps that
the notebooks hit are filled here; docs/reports.md says which and why MathML rather than MathJax.
"""

from __future__ import annotations

import html
import re
import unicodedata
from xml.etree import ElementTree

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
MATH_CSS = """<style type="text/css">
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
