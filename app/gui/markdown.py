"""Markdown to the HTML subset Qt's text engine draws, with highlighted code.

No Qt here: `render` is a pure function, so it is tested without a window.
Raw HTML in model output is escaped, never interpreted. An unclosed code fence
(an answer still streaming) renders as a code block to the end of the text,
as CommonMark says, so code looks like code while it arrives.

Each code block gets a header with its language and a "Copy" link whose
address is `copy:<n>`; `Rendered.code_blocks[n]` is the text to copy.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from markdown_it import MarkdownIt
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import TextLexer, get_lexer_by_name
from pygments.styles import get_style_by_name
from pygments.util import ClassNotFound

PYGMENTS_STYLES = {"light": "default", "dark": "github-dark"}
COPY_SCHEME = "copy"


@dataclass
class Rendered:
    html: str
    code_blocks: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class CodeColors:
    background: str
    border: str
    header: str


@lru_cache(maxsize=4)
def _formatter(dark: bool) -> HtmlFormatter:
    # noclasses: Qt's rich text has no style sheet for pygments classes, so
    # every token carries its colour inline.
    return HtmlFormatter(style=PYGMENTS_STYLES["dark" if dark else "light"], noclasses=True,
                         nowrap=True)


@lru_cache(maxsize=4)
def code_colors(dark: bool) -> CodeColors:
    style = get_style_by_name(PYGMENTS_STYLES["dark" if dark else "light"])
    bg = style.background_color or ("#0d1117" if dark else "#f8f8f8")
    return CodeColors(background=bg, border="#30363d" if dark else "#d0d7de",
                      header="#8b949e" if dark else "#57606a")


def highlight_code(code: str, language: str, *, dark: bool) -> str:
    """The code as HTML spans with inline colours (no wrapping <pre>)."""
    try:
        lexer = get_lexer_by_name(language) if language else TextLexer()
    except ClassNotFound:
        lexer = TextLexer()
    return str(highlight(code, lexer, _formatter(dark))).rstrip("\n")


def _fence(dark: bool, tokens: list[Any], idx: int, env: dict[str, Any]) -> str:
    token = tokens[idx]
    language = (token.info or "").strip().split(" ")[0] if token.type == "fence" else ""
    code = token.content
    blocks: list[str] = env.setdefault("code_blocks", [])
    n = len(blocks)
    blocks.append(code)
    colors = code_colors(dark)
    body = highlight_code(code, language, dark=dark)
    label = html.escape(language or "code")
    # Qt draws a table cell's background reliably; a bare <pre> gets none.
    return (
        f'<table width="100%" cellspacing="0" cellpadding="6" border="0" '
        f'bgcolor="{colors.background}" style="margin-top:4px; margin-bottom:8px;">'
        f'<tr><td style="color:{colors.header}; font-size:small;">{label}</td>'
        f'<td align="right" style="font-size:small;">'
        f'<a href="{COPY_SCHEME}:{n}">Copy</a></td></tr>'
        f'<tr><td colspan="2"><pre style="margin:0;">{body}</pre></td></tr></table>\n'
    )


@lru_cache(maxsize=2)
def _parser(dark: bool) -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False, "breaks": True})
    md.enable(["table", "strikethrough"])

    def fence(_self: Any, tokens: list[Any], idx: int, _options: Any, env: Any) -> str:
        return _fence(dark, tokens, idx, env)

    md.add_render_rule("fence", fence)
    md.add_render_rule("code_block", fence)
    return md


def render(text: str, *, dark: bool = False) -> Rendered:
    """Render markdown `text` for a QTextDocument.

    Args:
        text: the message, possibly still growing.
        dark: use the dark code theme.
    """
    env: dict[str, Any] = {"code_blocks": []}
    body = _parser(dark).render(text, env)
    return Rendered(html=body, code_blocks=env["code_blocks"])
