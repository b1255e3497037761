"""Writers: a report's parts as table.md (Markdown), csv and tex files, and one self-contained
index.html (a jinja2 template; tables by DataFrame.to_html; plots inlined). Every file is written
atomically (a reader never sees half of one). The tokenizer study writes through the same."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

import pandas as pd
from markupsafe import Markup

from ablate.files import write_text
from ablate.report.parts import Bullets, Frame, Heading, Part, Text

TEMPLATES = Path(__file__).parent / "templates"


def markdown(title: str, parts: list[Part]) -> str:
    """The parts' blocks as Markdown: a blank line between blocks, the title right above the first."""
    blocks = [_block_md(b) for p in parts for b in p.blocks]
    return (f"# {title}\n" if title else "") + "\n\n".join(blocks) + "\n"


def _block_md(block) -> str:
    if isinstance(block, Heading):
        return "#" * block.level + " " + block.text
    if isinstance(block, Text):
        return "\n".join(block.lines)
    if isinstance(block, Bullets):
        return "\n".join(f"- {item}" for item in block.items)
    if isinstance(block, Frame):
        return _escaped(block.frame).to_markdown(disable_numparse=block.numbers_as_text)
    raise TypeError(f"not a block: {block!r}")


def _escaped(frame: pd.DataFrame) -> pd.DataFrame:
    """A pipe inside a cell would end a Markdown table's cell: escape it (a metric key is task|metric)."""
    out = frame.copy()
    out.index = pd.Index([x.replace("|", "\\|") if isinstance(x, str) else x for x in out.index], name=out.index.name)
    return out


def write_tables(parts: list[Part], out: Path) -> dict[str, Path]:
    """Each table of the parts as csv (and tex where asked); returns name -> path."""
    written = {}
    for table in (t for p in parts for t in p.tables):
        for kind in table.formats:
            path = out / f"{table.name}.{kind}"
            text = table.frame.to_csv(index=table.index) if kind == "csv" else _tex(table.frame)
            write_text(path, text)
            written[table.name if kind == "csv" and table.name != "table" else kind] = path
    return written


def _tex(frame: pd.DataFrame) -> str:
    return frame.to_latex(escape=True).replace("±", r"$\pm$")  # booktabs rules


def inline(text: str) -> str:
    """The report's prose markup as HTML: escaped, with **bold** and `code`."""
    text = html.escape(text, quote=False)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", text)


def html_page(title: str, parts: list[Part], images: list[Path]) -> str:
    """One self-contained page: the parts' blocks and every plot inlined (base64), so it opens
    offline from a file browser or a paper's supplement, with no server and no other file."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters["inline"] = lambda s: Markup(inline(s))
    env.filters["table"] = lambda f: Markup(f.to_html(escape=True, border=0, na_rep="n/a"))
    blocks = [(type(b).__name__.lower(), b) for p in parts for b in p.blocks]
    figures = [(p.stem, p.name, base64.b64encode(p.read_bytes()).decode()) for p in images]
    return env.get_template("index.html.j2").render(title=title, blocks=blocks, figures=figures)


def write_report(out: Path, title: str, parts: list[Part], markdown_name: str = "table.md") -> dict[str, Path]:
    """table.md (or `markdown_name`), the parts' tables, index.html; returns name -> path (md, csv,
    tex, comparisons, ..., each figure by its stem, html)."""
    text = markdown(title, parts)
    written = {"md": write_text(out / markdown_name, text)}
    written.update(write_tables(parts, out))
    images = [f for p in parts for f in p.figures if f is not None]
    written.update({f.stem: f for f in images})
    written["html"] = write_text(out / "index.html", html_page(title, parts, images))
    return written
