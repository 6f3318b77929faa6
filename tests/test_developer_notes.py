"""The developer notes' code blocks run as printed (book/developers.md)."""

from __future__ import annotations

import re
from pathlib import Path

PAGE = Path(__file__).resolve().parents[1] / "book" / "developers.md"


def test_every_python_block_runs_in_order(tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(), re.S)
    assert len(blocks) == 3
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for i, block in enumerate(blocks):
        code = block.replace("/tmp/last-blocks-adapter", str(tmp_path / "adapter"))
        exec(compile(code, f"{PAGE.name} block {i + 1}", "exec"), namespace)
    out = capsys.readouterr().out
    assert "method 'lora' has no option 'rnak'" in out
    assert "'method': 'last-blocks'" in out and "'blocks': 1" in out
    import deflect_min as dm

    assert "last-blocks" not in dm.METHODS
