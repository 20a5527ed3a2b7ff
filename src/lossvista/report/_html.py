"""The page of a report: blocks (tables, plots, text), escaping, and the one HTML file.

Everything a user or a file can name (titles, notes, metric and model names, settings) goes
through :func:`escape` before it reaches the page; figure JSON is embedded in
``<script type="application/json">`` with every ``<``, ``>`` and ``&`` written as a ``\\u``
escape, so no string inside it can close the script element. plotly.js is embedded inline
once; the page requests nothing when opened.
"""

from __future__ import annotations

import dataclasses
import html
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "Block",
    "Plot",
    "Section",
    "Table",
    "Text",
    "escape",
    "figure_json",
    "format_number",
    "page",
    "plain",
]

#: Settings values longer than this (as text) are cut in the metadata tables.
LONG_TEXT = 400


@dataclasses.dataclass
class Table:
    """A table: ``columns`` headers and ``rows`` of cells (numbers, strings, booleans, None)."""

    columns: Sequence[str]
    rows: Sequence[Sequence[Any]]
    caption: str = ""
    role: str = "summary"


@dataclasses.dataclass
class Plot:
    """One plotly figure: ``data`` (traces) and ``layout`` as plain JSON-ready values.

    ``controls`` lists extra HTML controls that :func:`page` draws under the plot: for N-D grids
    ``{"axis", "label", "coords", "index"}`` per slider, with the full values in ``volume``.
    """

    data: list[dict[str, Any]]
    layout: dict[str, Any]
    caption: str = ""
    volume: dict[str, Any] | None = None
    controls: list[dict[str, Any]] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Text:
    """A paragraph of plain text (escaped when written)."""

    text: str


Block = Table | Plot | Text


@dataclasses.dataclass
class Section:
    """One result's part of the page: a heading, its kind and its blocks."""

    title: str
    kind: str
    blocks: list[Block]


# -- values ----------------------------------------------------------------------------------
def escape(value: Any) -> str:
    """``str(value)`` with ``& < > " '`` escaped for HTML text and attribute values."""
    return html.escape(str(value), quote=True)


def plain(value: Any) -> Any:
    """``value`` as JSON-ready data: arrays and tensors as (nested) lists, numpy scalars as
    Python numbers, NaN and infinities as None (plotly draws gaps there)."""
    if isinstance(value, np.ndarray):
        return plain(value.tolist())
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a tensor
        return plain(value.detach().cpu().numpy())
    if isinstance(value, np.generic):
        return plain(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def figure_json(value: Any) -> str:
    """Strict JSON of ``value`` safe inside a ``<script>`` element (``<``, ``>``, ``&`` and the
    line separators U+2028/U+2029 as ``\\u`` escapes, so ``</script>`` cannot appear)."""
    text = json.dumps(plain(value), allow_nan=False, separators=(",", ":"))
    for char, code in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        text = text.replace(char, code)
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def format_number(value: float) -> str:
    """Six significant digits for reading (the cell's ``data-value`` keeps the exact value)."""
    if not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return f"{value:.6g}"


def _cell(value: Any) -> str:
    if isinstance(value, np.generic):
        value = value.item()
    if value is None:
        return '<td class="none">&ndash;</td>'
    if isinstance(value, bool):
        return f'<td class="bool" data-value="{str(value).lower()}">{"yes" if value else "no"}</td>'
    if isinstance(value, int):
        return f'<td class="num" data-value="{value}">{value}</td>'
    if isinstance(value, float):
        return f'<td class="num" data-value="{value!r}">{format_number(value)}</td>'
    text = value if isinstance(value, str) else json.dumps(plain(value), sort_keys=True)
    if len(text) > LONG_TEXT:
        text = text[:LONG_TEXT] + f" ... ({len(text)} characters)"
    return f"<td>{escape(text)}</td>"


# -- blocks ----------------------------------------------------------------------------------
def _table_html(table: Table) -> str:
    head = "".join(f"<th>{escape(c)}</th>" for c in table.columns)
    body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in table.rows)
    caption = f"<caption>{escape(table.caption)}</caption>" if table.caption else ""
    return (
        f'<table class="lv-table" data-role="{escape(table.role)}">{caption}'
        f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    )


def _plot_html(plot: Plot, number: int) -> str:
    ident = f"lv-plot-{number}"
    spec = {"data": plot.data, "layout": plot.layout}
    if plot.volume is not None:
        spec["volume"] = plot.volume
    parts = [f'<figure class="lv-figure"><div class="lv-plot" id="{ident}"></div>']
    for control in plot.controls:
        coords = control["coords"]
        parts.append(
            f'<label class="lv-slider">{escape(control["label"])} = '
            f'<output id="{ident}-out-{control["axis"]}">'
            f"{format_number(float(coords[control['index']]))}</output>"
            f'<input type="range" min="0" max="{len(coords) - 1}" step="1" '
            f'value="{control["index"]}" data-plot="{ident}" data-axis="{control["axis"]}" '
            f'data-coords="{escape(json.dumps(plain(list(coords))))}"></label>'
        )
    if plot.caption:
        parts.append(f"<figcaption>{escape(plot.caption)}</figcaption>")
    parts.append(
        f'<script type="application/json" class="lv-figure-data" data-plot="{ident}">'
        f"{figure_json(spec)}</script></figure>"
    )
    return "".join(parts)


def _block_html(block: Block, counter: list[int]) -> str:
    if isinstance(block, Table):
        return _table_html(block)
    if isinstance(block, Plot):
        counter[0] += 1
        return _plot_html(block, counter[0])
    return f'<p class="lv-text">{escape(block.text)}</p>'


# -- the page --------------------------------------------------------------------------------
_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;max-width:1100px;
padding:1em 2em;color:#222}
h1{font-size:1.6em}h2{font-size:1.3em;border-bottom:1px solid #ccc;padding-top:.5em}
.lv-notes{white-space:pre-wrap;background:#f6f6f6;padding:.6em 1em;border-radius:4px}
table.lv-table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
table.lv-table td,table.lv-table th{border:1px solid #ddd;padding:2px 8px;text-align:left}
table.lv-table td.num{text-align:right;font-variant-numeric:tabular-nums}
table.lv-table caption{text-align:left;font-weight:600;padding:.3em 0}
.lv-plot{width:100%;height:480px}figure.lv-figure{margin:.5em 0}
.lv-slider{display:block;margin:.3em 0}.lv-slider input{width:60%;margin-left:1em}
footer{color:#777;font-size:.85em;margin-top:2em}
"""

# Draws every figure, then wires the N-D sliders: each moves one fixed axis and the plane is
# cut from the full array again (C order, the first two axes are the plane's x and y).
_DRAW = """
(function(){
var config={displaylogo:false,responsive:true,showLink:false,showSendToCloud:false,
typesetMath:false};
var specs={};
document.querySelectorAll('script.lv-figure-data').forEach(function(el){
  var id=el.getAttribute('data-plot');var spec=JSON.parse(el.textContent);specs[id]=spec;
  Plotly.newPlot(id,spec.data,spec.layout,config);
});
function plane(volume,fixed){
  var shape=volume.shape,strides=[],s=1;
  for(var a=shape.length-1;a>=0;a--){strides[a]=s;s*=shape[a];}
  var base=0;for(var k in fixed){base+=fixed[k]*strides[k];}
  var z=[];
  for(var j=0;j<shape[1];j++){var row=[];
    for(var i=0;i<shape[0];i++){row.push(volume.values[base+i*strides[0]+j*strides[1]]);}
    z.push(row);}
  return z;
}
document.querySelectorAll('input[data-plot]').forEach(function(input){
  input.addEventListener('input',function(){
    var id=input.getAttribute('data-plot');var fixed={};
    document.querySelectorAll('input[data-plot="'+id+'"]').forEach(function(other){
      var axis=+other.getAttribute('data-axis');fixed[axis]=+other.value;
      var coords=JSON.parse(other.getAttribute('data-coords'));
      document.getElementById(id+'-out-'+axis).textContent=
        Number(coords[+other.value]).toPrecision(6).replace(/\\.?0+$/,'');
    });
    Plotly.restyle(id,{z:[plane(specs[id].volume,fixed)]},[0]);
  });
});
})();
"""


def page(
    title: str,
    notes: str | None,
    sections: Sequence[Section],
    plotly_js: str,
    footer: str,
) -> str:
    """The whole HTML document (a string): plotly.js inline once, then one part per section."""
    counter = [0]
    # plotly.js holds no "</script"; the guard keeps that true for any future version.
    safe_js = plotly_js.replace("</script", "<\\/script")
    toc = "".join(
        f'<li><a href="#lv-section-{i}">{escape(s.title)}</a></li>'
        for i, s in enumerate(sections, start=1)
    )
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{escape(title)}</title>",
        f"<style>{_STYLE}</style>",
        f"<script>{safe_js}</script>",
        "</head><body>",
        f'<h1 id="lv-title">{escape(title)}</h1>',
    ]
    if notes:
        parts.append(f'<div class="lv-notes" id="lv-notes">{escape(notes)}</div>')
    parts.append(f'<nav><ol class="lv-toc">{toc}</ol></nav>')
    for i, section in enumerate(sections, start=1):
        blocks = "".join(_block_html(block, counter) for block in section.blocks)
        parts.append(
            f'<section class="lv-section" id="lv-section-{i}" data-kind="{escape(section.kind)}">'
            f"<h2>{escape(section.title)}</h2>{blocks}</section>"
        )
    parts += [f"<footer>{escape(footer)}</footer>", f"<script>{_DRAW}</script>", "</body></html>"]
    return "\n".join(parts)
