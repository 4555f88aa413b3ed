"""The status bar: where it runs, memory, and the last answer's speed and context."""

from __future__ import annotations

from typing import Any

import psutil
from PySide6.QtCore import QTimer, Slot
from PySide6.QtWidgets import QLabel, QProgressBar, QStatusBar, QWidget

from mixdesk.app.gui.models import human_bytes

CPU_ONLY = "CPU — no NVIDIA GPU found, running on the CPU"
RAM_POLL_MS = 2000


class StatusBar(QStatusBar):
    """Device, VRAM gauge (CUDA only), RAM, tok/s, TTFT, context used/max.

    Attributes:
        hardware: what the worker's probe found (gpu, vram_total, ram_total).
    """

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setSizeGripEnabled(False)
        self.hardware: dict[str, Any] = {}
        self.device = QLabel("Detecting hardware…")
        self.vram = QProgressBar()
        self.vram.setObjectName("VramGauge")
        self.vram.setRange(0, 1000)
        self.vram.hide()
        self.ram = QLabel()
        self.speed = QLabel()
        self.context = QLabel()
        self.addWidget(self.device)
        self.addWidget(self.vram)
        self.addWidget(self.ram)
        self.addPermanentWidget(self.speed)
        self.addPermanentWidget(self.context)
        self._timer = QTimer(self)
        self._timer.setInterval(RAM_POLL_MS)
        self._timer.timeout.connect(self.update_ram)
        self._timer.start()
        self.update_ram()

    @Slot(object)
    def set_hardware(self, info: dict[str, Any]) -> None:
        self.hardware = dict(info)
        if info.get("gpu"):
            self.device.setText(str(info["gpu"]))
            self.set_vram(info.get("vram_used"))
        else:
            self.device.setText(CPU_ONLY)
            self.vram.hide()
        self.update_ram()

    def set_vram(self, used: int | None) -> None:
        total = self.hardware.get("vram_total")
        if not total or used is None:
            return
        self.vram.setValue(int(1000 * used / total))
        self.vram.setFormat(f"VRAM {used / 1e9:.1f}/{total / 1e9:.1f} GB")
        self.vram.setToolTip("GPU memory in use, of the card's total")
        self.vram.show()

    @Slot()
    def update_ram(self) -> None:
        mem = psutil.virtual_memory()
        rss = psutil.Process().memory_info().rss
        self.ram.setText(f"RAM {human_bytes(rss)} (app) · {human_bytes(mem.available)} free")
        self.ram.setToolTip(f"{human_bytes(mem.total)} installed")

    @Slot(object)
    def set_stats(self, stats: dict[str, Any]) -> None:
        parts = []
        if stats.get("decode_tps"):
            parts.append(f"{stats['decode_tps']:.1f} tok/s")
        if stats.get("ttft_s"):
            parts.append(f"TTFT {stats['ttft_s']:.2f} s")
        self.speed.setText(" · ".join(parts))
        if stats.get("context_max"):
            self.context.setText(f"ctx {stats.get('context_used', 0)}/{stats['context_max']}")
        if stats.get("vram_used"):
            self.set_vram(int(stats["vram_used"]))

    def set_context_max(self, context_max: int | None) -> None:
        if context_max:
            self.context.setText(f"ctx 0/{context_max}")
        else:
            self.context.setText("")
