"""One HTML page of an evaluation, for deciding whether to trust the refiner on many cases: the summary per
class with its harm (intact cases newly broken, cases made worse), then one row per case and class that sorts
by any column (how much the refiner changed or harmed it), each with its before/after picture one click away.

Self-contained: CSS and the sorting script are inline and thumbnails are data URIs, so the page opens from
disk, offline, and can be mailed with its `cases/` pictures. Dicts in, one file out: nothing of nnU-Net here."""
from __future__ import annotations

import base64
import html
import io
import os
from typing import Dict, List, Optional, Sequence

from PIL import Image

from rnca_nnunet.files import atomic_path
from rnca_nnunet.metrics import harm_line, topology_errors

SUMMARY_COLUMNS = ("dice", "cldice", "beta0_error", "beta1_error", "beta0_signed", "beta1_signed", "assd", "hd95",
                   "broken")
CASE_METRICS = {"dice": ("dice", 3), "cldice": ("clDice", 3), "beta0_error": ("β0 err", 0),
                "beta1_error": ("β1 err", 0)}  # key -> column heading and decimals in the cases table
THUMBNAIL_HEIGHT = 120  # pixels: a before/after overlay of three panels is then about 340 wide

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin-bottom: 1.5em; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 6px; text-align: right; }
th { background: #f0f0f0; }
#cases th { cursor: pointer; user-select: none; }
#cases th[aria-sort=ascending]::after { content: " \\25B2"; }
#cases th[aria-sort=descending]::after { content: " \\25BC"; }
td.text { text-align: left; }
tr.newly-broken td { background: #fde0e0; }
tr.repaired td { background: #e0f5e0; }
img.thumb { display: block; height: 120px; }
"""

# click a header: sort by it, numbers by value (data-v), text alphabetically; click again: the other way
SCRIPT = """
document.querySelectorAll('#cases th').forEach(function (header, column) {
  header.addEventListener('click', function () {
    var body = document.querySelector('#cases tbody');
    var descending = header.getAttribute('aria-sort') === 'ascending';
    document.querySelectorAll('#cases th').forEach(function (h) { h.removeAttribute('aria-sort'); });
    header.setAttribute('aria-sort', descending ? 'descending' : 'ascending');
    var rows = Array.prototype.slice.call(body.rows);
    var key = function (row) {
      var cell = row.cells[column];
      return cell.hasAttribute('data-v') ? parseFloat(cell.getAttribute('data-v')) : cell.textContent;
    };
    rows.sort(function (a, b) {
      var x = key(a), y = key(b);
      var order = typeof x === 'number' ? x - y : String(x).localeCompare(String(y));
      return descending ? -order : order;
    });
    rows.forEach(function (row) { body.appendChild(row); });
  });
});
"""


def case_status(before: Dict[str, float], after: Optional[Dict[str, float]]) -> str:
    """One word for a (case, class) pair: what the refinement did to its topology."""
    if after is None:
        return "broken" if before["broken"] else "intact"
    if before["broken"]:
        return "still broken" if after["broken"] else "repaired"
    return "newly broken" if after["broken"] else "intact"


def thumbnail(picture: str, height: int = THUMBNAIL_HEIGHT) -> str:
    """A picture file as a small JPEG data URI, so the page carries its thumbnails inline (a few kB each)."""
    with Image.open(picture) as image:
        image = image.convert("RGB")
        image = image.resize((max(1, round(image.width * height / image.height)), height), Image.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _number(value: float, digits: int = 3) -> str:
    return f'<td data-v="{value:.6g}">{value:.{digits}f}</td>'


def _summary_table(summary: Dict) -> List[str]:
    means = summary["mean"]
    lines = ["<table id='summary'><thead><tr><th>prediction</th><th>class</th>"
             + "".join(f"<th>{c}</th>" for c in SUMMARY_COLUMNS) + "</tr></thead><tbody>"]
    for key, per_class in means.items():
        for name, metrics in per_class.items():
            lines.append(f"<tr><td class='text'>{html.escape(key)}</td><td class='text'>{html.escape(name)}</td>"
                         + "".join(_number(metrics[c]) for c in SUMMARY_COLUMNS) + "</tr>")
    lines.append("</tbody></table>")
    for name, rate in summary.get("repair", {}).get("refined", {}).items():
        lines.append(f"<p class='harm'><b>{html.escape(name)}</b>: {html.escape(harm_line(rate))}; "
                     f"{rate['made_much_worse']} by more than one error</p>")
    return lines


def _picture_cells(stem: str, folder: str, pictures: Optional[str], suffix: str) -> str:
    """A thumbnail linking to the full-size picture (relative, so the page and `cases/` move together)."""
    path = os.path.join(pictures, stem + suffix + ".png") if pictures else None
    if path is None or not os.path.isfile(path):
        return "<td class='text'>-</td>"
    link = html.escape(os.path.relpath(path, folder))
    return f"<td class='text'><a href='{link}'><img class='thumb' alt='{html.escape(stem + suffix)}' " \
           f"src='{thumbnail(path)}'></a></td>"


def _case_rows(summary: Dict, folder: str, pictures: Optional[str], stems: Sequence[str]) -> List[str]:
    refined = "refined" in summary["mean"]
    uncertainty = any("uncertainty" in case for case in summary["per_case"])
    headers = ["case", "class"] + [f"{heading} {when}" for heading, _ in CASE_METRICS.values()
                                   for when in (("before", "after") if refined else ("",))]
    headers += ["status"] + (["errors added", "cells changed", "rewritten %"] if refined else []) + ["picture"]
    headers += ["unstable cells %", "unstable topology %", "uncertainty"] if uncertainty else []
    lines = ["<table id='cases'><thead><tr>" + "".join(f"<th>{html.escape(h.strip())}</th>" for h in headers)
             + "</tr></thead><tbody>"]
    for case, stem in zip(summary["per_case"], stems):
        for name, before in case["base"].items():
            after = case["refined"][name] if refined else None
            status = case_status(before, after)
            cells = [f"<td class='text'>{html.escape(case['case'])}</td>", f"<td class='text'>{html.escape(name)}</td>"]
            for metric, (_, digits) in CASE_METRICS.items():
                cells += [_number(before[metric], digits)] + ([_number(after[metric], digits)] if refined else [])
            cells.append(f"<td class='text'>{status}</td>")
            if refined:
                cells += [_number(topology_errors(after) - topology_errors(before), 0),
                          _number(case["changed_cells"][name], 0), _number(100 * case["rewritten"], 1)]
            cells.append(_picture_cells(stem, folder, pictures, ""))
            if uncertainty:
                scores = case.get("uncertainty")
                cells += [_number(100 * scores["cells"], 1), _number(100 * scores["topology"], 0)] if scores \
                    else ["<td data-v='-1'>-</td>"] * 2
                cells.append(_picture_cells(stem, folder, pictures, "_uncertainty"))
            lines.append(f"<tr class='{status.replace(' ', '-')}'>" + "".join(cells) + "</tr>")
    lines.append("</tbody></table>")
    return lines


def write_report(summary: Dict, folder: str, pictures: Optional[str], stems: Sequence[str],
                 title: str = "rNCA evaluation") -> str:
    """`folder/index.html` of an `evaluate.evaluate_folders` summary; `pictures` holds each case's
    `<stem>.png` (and `<stem>_uncertainty.png`) overlay, `stems` the cases' names in `per_case` order."""
    cases = len(summary["per_case"])
    page = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>",
            f"<h1>{html.escape(title)}</h1><p>{cases} cases. Status per case and class: <i>repaired</i> (topology "
            "wrong before, right after), <i>newly broken</i> (right before, wrong after), <i>still broken</i>, "
            "<i>intact</i>; errors added: beta0 + beta1 errors after minus before. Click a column to sort.</p>",
            "<h2>Summary</h2>", *_summary_table(summary), "<h2>Cases</h2>",
            *_case_rows(summary, folder, pictures, stems), f"<script>{SCRIPT}</script></body></html>"]
    path = os.path.join(folder, "index.html")
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write("\n".join(page))
    return path
