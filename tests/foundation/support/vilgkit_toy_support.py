"""Test-only components for the foundation tests (put on sys.path / PYTHONPATH by the tests)."""

from __future__ import annotations

import json

from vilgkit.interfaces import AttentionPattern, RunContext, Stage
from vilgkit.layout import Layout
from vilgkit.registry import STAGES


@STAGES.register_module()
class EchoStage(Stage):
    """Writes ``message * times`` (and the mask size of an optional attention pattern) to its stage dir."""

    def __init__(
        self, name: str | None = None, message: str = "hi", times: int = 1, attention: AttentionPattern | None = None
    ) -> None:
        super().__init__(name)
        self.message, self.times, self.attention = message, times, attention

    def run(self, ctx: RunContext) -> dict:
        out = {"text": self.message * self.times}
        if self.attention is not None:
            out["allowed"] = int(self.attention.allowed(0, 2, Layout.text_to_image(2, 2, 2)).sum())
        (ctx.stage_dir(self.name) / "echo.json").write_text(json.dumps(out))
        return out
