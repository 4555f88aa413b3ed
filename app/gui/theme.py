"""Light and dark themes: the Qt palette, the style sheet, the icon colours.

"system" follows the desktop's colour scheme (Qt 6.5+ reports it) and
switches when the desktop does. The style sheet is `resources/style.qss`
with `@name` tokens filled from the palette below; icons are the SVGs in
`resources/icons/` with `currentColor` painted in the theme's text colour.
"""

from __future__ import annotations

import logging
import re
from functools import lru_cache
from importlib import resources

from PySide6.QtCore import QByteArray, QSize, Qt
from PySide6.QtGui import QColor, QGuiApplication, QIcon, QPainter, QPalette, QPixmap
from PySide6.QtSvg import QSvgRenderer
from PySide6.QtWidgets import QApplication

log = logging.getLogger("mixdesk.gui.theme")

LIGHT = {
    "window": "#f6f6f7", "base": "#ffffff", "sidebar": "#f3f3f5", "text": "#1f2328",
    "muted": "#6e7781", "border": "#d8dade", "hover": "#e9eaee", "selection": "#dfe3ea",
    "accent": "#d9480f", "accent_text": "#ffffff", "danger": "#c92a2a",
    "user_bubble": "#eef1f5", "assistant_bubble": "#ffffff",
    "banner_bg": "#fff4e5", "banner_border": "#f5c07a", "banner_text": "#7a4100",
    "info_bg": "#e7f1ff", "info_border": "#9cc3ff", "info_text": "#0b3d91",
    "warning_bg": "#fff4e5", "warning_text": "#9a5b00",
}
DARK = {
    "window": "#1b1c1f", "base": "#212226", "sidebar": "#18191c", "text": "#e6e7ea",
    "muted": "#9aa0a8", "border": "#34363c", "hover": "#2b2d33", "selection": "#33363d",
    "accent": "#ff7a33", "accent_text": "#1b1c1f", "danger": "#ff6b6b",
    "user_bubble": "#2b2d33", "assistant_bubble": "#212226",
    "banner_bg": "#3a2a12", "banner_border": "#7a5520", "banner_text": "#ffd8a8",
    "info_bg": "#13294b", "info_border": "#2c5aa0", "info_text": "#cfe2ff",
    "warning_bg": "#3a2a12", "warning_text": "#ffc078",
}


def resource_text(name: str) -> str:
    return resources.files("mixdesk.resources").joinpath(name).read_text(encoding="utf-8")


def resource_bytes(name: str) -> bytes:
    return resources.files("mixdesk.resources").joinpath(name).read_bytes()


def system_is_dark() -> bool:
    hints = QGuiApplication.styleHints()
    return bool(hints.colorScheme() == Qt.ColorScheme.Dark)


def is_dark(theme: str) -> bool:
    """Whether `theme` ("system", "light" or "dark") draws dark right now."""
    return theme == "dark" or (theme == "system" and system_is_dark())


def colors(dark: bool) -> dict[str, str]:
    return DARK if dark else LIGHT


def style_sheet(dark: bool) -> str:
    """The style sheet with the theme's colours filled in."""
    palette = colors(dark)
    text = resource_text("style.qss")
    missing = {m for m in re.findall(r"@(\w+)", text) if m not in palette}
    if missing:
        raise KeyError(f"style.qss uses colours the theme lacks: {sorted(missing)}")
    # longest names first, so @base never eats the start of @base_x
    for key in sorted(palette, key=len, reverse=True):
        text = text.replace(f"@{key}", palette[key])
    return text


def qt_palette(dark: bool) -> QPalette:
    c = {k: QColor(v) for k, v in colors(dark).items()}
    p = QPalette()
    role = QPalette.ColorRole
    p.setColor(role.Window, c["window"])
    p.setColor(role.WindowText, c["text"])
    p.setColor(role.Base, c["base"])
    p.setColor(role.AlternateBase, c["sidebar"])
    p.setColor(role.Text, c["text"])
    p.setColor(role.Button, c["window"])
    p.setColor(role.ButtonText, c["text"])
    p.setColor(role.ToolTipBase, c["base"])
    p.setColor(role.ToolTipText, c["text"])
    p.setColor(role.PlaceholderText, c["muted"])
    p.setColor(role.Highlight, c["accent"])
    p.setColor(role.HighlightedText, c["accent_text"])
    p.setColor(role.Link, c["accent"])
    p.setColor(role.BrightText, c["danger"])
    for r in (role.Text, role.WindowText, role.ButtonText):
        p.setColor(QPalette.ColorGroup.Disabled, r, c["muted"])
    return p


def apply_theme(app: QApplication, theme: str, font_size: int = 0) -> bool:
    """Style the whole app; returns whether it is dark."""
    dark = is_dark(theme)
    app.setStyle("Fusion")  # the one style that honours a full palette everywhere
    app.setPalette(qt_palette(dark))
    font = app.font()
    if font_size > 0:
        font.setPointSize(font_size)
        app.setFont(font)
    app.setStyleSheet(style_sheet(dark))
    icon.cache_clear()
    return dark


@lru_cache(maxsize=128)
def icon(name: str, dark: bool = False, size: int = 24) -> QIcon:
    """An icon from resources/icons, drawn in the theme's text colour."""
    svg = resource_text(f"icons/{name}.svg").replace("currentColor", colors(dark)["text"])
    renderer = QSvgRenderer(QByteArray(svg.encode()))
    if not renderer.isValid():
        raise ValueError(f"icon {name}.svg is not valid SVG")
    result = QIcon()
    for scale in (1, 2):
        pixmap = QPixmap(QSize(size * scale, size * scale))
        pixmap.fill(Qt.GlobalColor.transparent)
        painter = QPainter(pixmap)
        renderer.render(painter)
        painter.end()
        pixmap.setDevicePixelRatio(scale)
        result.addPixmap(pixmap)
    return result


def app_icon() -> QIcon:
    renderer = QSvgRenderer(QByteArray(resource_bytes("mixdesk.svg")))
    result = QIcon()
    for size in (16, 32, 48, 64, 128, 256):
        pixmap = QPixmap(size, size)
        pixmap.fill(Qt.GlobalColor.transparent)
        painter = QPainter(pixmap)
        renderer.render(painter)
        painter.end()
        result.addPixmap(pixmap)
    return result


ICON_NAMES = ("new-chat", "search", "send", "stop", "copy", "edit", "regenerate", "settings",
              "preferences", "chip", "trash", "warning", "close", "export", "import")


def check_resources() -> list[str]:
    """Load every icon and the style sheet; return the problems found (selftest)."""
    problems = []
    for name in ICON_NAMES:
        try:
            icon(name, False)
        except Exception as e:
            problems.append(f"icon {name}: {e}")
    for dark in (False, True):
        try:
            style_sheet(dark)
        except Exception as e:
            problems.append(f"style sheet (dark={dark}): {e}")
    try:
        if app_icon().isNull():
            problems.append("app icon is empty")
        text = resource_text("mixdesk.desktop")
        if "Exec=mixdesk gui" not in text:
            problems.append("mixdesk.desktop lacks its Exec line")
    except Exception as e:
        problems.append(f"app icon or .desktop file: {e}")
    return problems
