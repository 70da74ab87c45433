"""The paper as a PDF, from the HTML `make paper` already writes.

Laid out by xhtml2pdf (ReportLab underneath): pure Python wheels that `pip install -e .` brings, so no
user installs a TeX distribution or a system library. ReportLab's invariant mode leaves out timestamps
and random document ids, so the same HTML gives the same bytes. The text is set in DejaVu, the fonts
matplotlib ships, which hold the Greek letters and symbols the paper uses (λ, β, μ, ≥, ±).

    html_to_pdf(html, Path("paper/build/cpu/paper.pdf"), base=Path("paper/build/cpu"))
"""

from __future__ import annotations

import io
import re
from pathlib import Path

from gptvae.files import atomic_write_bytes

PAGE_WIDTH_PT = 480   # A4 less 2 cm margins on each side, in points: the width figures are scaled to


def _font_folder() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def _fonts() -> str:
    folder = _font_folder()
    faces = [("Serif", "DejaVuSerif", "normal", "normal"), ("Serif", "DejaVuSerif-Bold", "bold", "normal"),
             ("Serif", "DejaVuSerif-Italic", "normal", "italic"), ("Serif", "DejaVuSerif-BoldItalic", "bold", "italic"),
             ("Mono", "DejaVuSansMono", "normal", "normal")]
    return "\n".join(f"@font-face {{ font-family: DejaVu{family}; src: url('{folder / f'{name}.ttf'}'); "
                     f"font-weight: {weight}; font-style: {style}; }}" for family, name, weight, style in faces)


STYLE = """
@page { size: a4 portrait; margin: 2cm; @frame footer { -pdf-frame-content: footer; bottom: 1cm;
        margin-left: 2cm; margin-right: 2cm; height: 0.6cm; } }
body { font-family: DejaVuSerif; font-size: 9.5pt; line-height: 1.35; }
h1 { font-size: 15pt; } h2 { font-size: 12.5pt; margin-top: 10pt; } h3 { font-size: 10.5pt; }
code { font-family: DejaVuMono; font-size: 8pt; }
table { font-size: 6.8pt; -pdf-keep-in-frame-mode: shrink; }
td, th { border: 0.4pt solid #999999; padding: 1.5pt; }
p { margin: 0 0 5pt 0; }
#footer { text-align: center; font-size: 8pt; color: #666666; }
"""


def _images(html: str, base: Path) -> list[Path]:
    return [(base / src).resolve() for src in re.findall(r'<img [^>]*src="([^"]+)"', html)]


def _policy(roots: list[Path]) -> dict:
    """xhtml2pdf confines local reads to the document's folder (in versions that have resource policies):
    open it to exactly the folders the paper reads, and nothing remote."""
    try:
        from xhtml2pdf.config.resources import ResourceAccessPolicy
    except ImportError:   # an older xhtml2pdf reads what its link callback returns
        return {}
    unique = tuple(dict.fromkeys(roots))
    return {"resource_policy": ResourceAccessPolicy(base_dir=unique[0], extra_roots=unique[1:], allow_remote=False)}


def _scaled_images(html: str, base: Path) -> str:
    """Every <img> at the text width, its height from the PNG's own aspect ratio (xhtml2pdf has no max-width)."""
    from PIL import Image

    def scale(match: re.Match) -> str:
        tag = match.group(0)
        src = re.search(r'src="([^"]+)"', tag).group(1)
        path = (base / src).resolve()
        with Image.open(path) as image:
            width, height = image.size
        return tag.replace("<img ", f'<img width="{PAGE_WIDTH_PT}" height="{round(PAGE_WIDTH_PT * height / width)}" ', 1)

    return re.sub(r"<img [^>]*>", scale, html)


def html_to_pdf(html_body: str, out: Path, *, base: Path, title: str = "gptvae") -> Path:
    """Write the body of an HTML page (as `markdown` renders it) to out as a PDF; relative image paths are
    read from base. Raises RuntimeError naming what xhtml2pdf could not lay out."""
    from reportlab import rl_config

    rl_config.invariant = 1   # no creation date, no random file id: reproducible bytes
    from xhtml2pdf import pisa

    base = Path(base).resolve()
    page = (f"<html><head><meta charset='utf-8'><title>{title}</title><style>{_fonts()}{STYLE}</style></head><body>"
            f"<div id='footer'>gptvae · <pdf:pagenumber></div>{_scaled_images(html_body, base)}</body></html>")
    buffer = io.BytesIO()

    def link(uri: str, rel: str) -> str:
        path = Path(uri)
        return str(path if path.is_absolute() else (base / path).resolve())

    roots = [base, _font_folder().resolve(), *(path.parent for path in _images(html_body, base))]
    status = pisa.CreatePDF(page, dest=buffer, encoding="utf-8", link_callback=link, **_policy(roots))
    if status.err:
        raise RuntimeError(f"xhtml2pdf could not lay out {out.name}: {status.err} error(s); see its log above")
    atomic_write_bytes(out, lambda handle: handle.write(buffer.getvalue()))
    return out


__all__ = ["html_to_pdf"]
