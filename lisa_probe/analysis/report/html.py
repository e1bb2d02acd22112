"""``report.html``: the markdown report as one self-contained page (figures embedded as data URIs, tables styled),
which opens from anywhere — a mail attachment, a moved folder — without its ``figures/`` directory."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import markdown

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.85em; display: block; overflow-x: auto; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f3f3f3; }
td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; }
code, pre { background: #f6f6f6; }
pre { padding: 0.6em; overflow-x: auto; }
em { color: #555; }
"""


def embed_images(html: str, base: Path) -> str:
    """Replace every ``src="<relative .png>"`` under ``base`` with a ``data:image/png;base64`` URI."""

    def inline(match: re.Match) -> str:
        path = base / match.group(1)
        return f'src="data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}"' if path.is_file() \
            else match.group(0)

    return re.sub(r'src="([^":]+\.png)"', inline, html)


def write_html(markdown_path: Path) -> Path:
    """``report.html`` beside ``markdown_path``: its markdown rendered (tables, code blocks, the ``<details>`` of the
    configs) with the figures it links embedded; returns the page's path."""
    body = markdown.markdown(markdown_path.read_text(), extensions=["tables", "fenced_code", "md_in_html"])
    title = next(iter(re.findall(r"<h1>(.*?)</h1>", body)), "lisa_probe report")
    page = (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title><style>{STYLE}</style>"
            f"</head><body>\n{embed_images(body, markdown_path.parent)}\n</body></html>\n")
    path = markdown_path.with_name("report.html")
    path.write_text(page)
    return path
