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
import re
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


@lru_cache(maxsize=512)  # a streaming answer re-renders its finished code blocks each batch
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


_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_COPY_LINK = re.compile(COPY_SCHEME + r":(\d+)\"")


def split_blocks(text: str) -> list[str]:
    """Cut markdown where a new top-level block starts, never inside a code fence.

    A cut falls before a line that starts in column 0 after a blank line, so
    indented continuations (list items, indented code) stay with their block.
    Rendering the pieces one by one gives the same page; it lets a streaming
    answer re-render only its last piece.
    """
    pieces: list[str] = []
    current: list[str] = []
    fence = ""
    previous_blank = False
    for line in text.split("\n"):
        if not fence and previous_blank and current and line and not line[0].isspace():
            pieces.append("\n".join(current))
            current = []
        current.append(line)
        match = _FENCE.match(line)
        if match:
            marker = match.group(1)
            if not fence:
                fence = marker
            elif marker[0] == fence[0] and len(marker) >= len(fence) and \
                    line.strip() == marker:
                fence = ""
        previous_blank = not line.strip()
    pieces.append("\n".join(current))
    return pieces


@lru_cache(maxsize=4096)
def _render_piece(piece: str, dark: bool) -> tuple[str, tuple[str, ...]]:
    env: dict[str, Any] = {"code_blocks": []}
    body = _parser(dark).render(piece, env)
    return body, tuple(env["code_blocks"])


def _renumber_copy_links(body: str, offset: int) -> str:
    def shift(match: re.Match[str]) -> str:
        return f'{COPY_SCHEME}:{int(match.group(1)) + offset}"'

    return _COPY_LINK.sub(shift, body)


def render(text: str, *, dark: bool = False) -> Rendered:
    """Render markdown `text` for a QTextDocument.

    Finished blocks come from a cache, so re-rendering a growing answer costs
    about as much as its last block.

    Args:
        text: the message, possibly still growing.
        dark: use the dark code theme.
    """
    pieces = render_pieces(text, dark=dark)
    return Rendered(html="".join(p.html for p in pieces),
                    code_blocks=[c for p in pieces for c in p.code_blocks])


def render_pieces(text: str, *, dark: bool = False) -> list[Rendered]:
    """`render`, one `Rendered` per `split_blocks` piece; copy links numbered across all."""
    out: list[Rendered] = []
    count = 0
    for piece in split_blocks(text):
        body, codes = _render_piece(piece, dark)
        if codes:
            body = _renumber_copy_links(body, count)
            count += len(codes)
        out.append(Rendered(html=body, code_blocks=list(codes)))
    return out


WARM_UP_LANGUAGES = ("python", "bash", "json", "javascript", "typescript", "c", "cpp", "rust",
                     "go", "java", "sql", "html", "yaml")


def warm_up() -> None:
    """Build the parsers and load the common lexers now, not during the first answer."""
    sample = "# t\n\n**b** `c`\n\n" + "".join(f"```{lang}\nx\n```\n\n"
                                                for lang in WARM_UP_LANGUAGES)
    for dark in (False, True):
        render(sample, dark=dark)
