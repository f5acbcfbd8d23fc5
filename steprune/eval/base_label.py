"""Which base a world report was measured on: its recipe preset, test accuracy and weights fingerprint.

    from steprune.eval.base_label import base_facts, base_line, check_same_base
    report["base"] = base_facts("artifacts/base")      # from its build_info.json; None without one
    text = base_line(report["base"])                   # "Base: **v4** (82.3 % on 2000 test questions, ...)"
    check_same_base(baselines["base"], "artifacts/base")  # ValueError if the base was rebuilt since

Every world report (`steprune eval --suite world`, the selector study, `make train`'s comparison) records it,
and its Markdown says it in its first line, so a table cannot outlive the base it describes unnoticed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

WEIGHTS_FILE = "model.safetensors"


def base_facts(backbone: str | Path) -> dict[str, Any] | None:
    """The preset, test accuracy and weights SHA-256 in `backbone`/build_info.json (None if it has none)."""
    path = Path(backbone) / "build_info.json"
    if not path.is_file():
        return None
    info = json.loads(path.read_text())
    test = info.get("test_accuracy", {})
    digest = info.get("weights_sha256")
    return {
        "path": str(backbone),
        "preset": info.get("preset"),
        "test_accuracy": test.get("overall"),
        "test_questions": test.get("count"),
        "weights_sha256": digest.get(WEIGHTS_FILE) if isinstance(digest, dict) else digest,
        "commit": info.get("provenance", {}).get("commit"),
    }


def base_line(facts: dict[str, Any] | None) -> str:
    """One Markdown line naming the base (empty without facts)."""
    if not facts:
        return ""
    name = f"**{facts['preset']}**" if facts.get("preset") else "a custom recipe"
    accuracy = facts.get("test_accuracy")
    measured = (
        f"{100 * accuracy:.1f} % on {facts.get('test_questions') or '?'} test questions, "
        if accuracy is not None
        else ""
    )
    sha = (facts.get("weights_sha256") or "unknown")[:12]
    return f"Base: {name} ({measured}weights sha256 {sha}…, `{facts['path']}`)\n\n"


def check_same_base(recorded: dict[str, Any] | None, backbone: str | Path) -> None:
    """Refuse to add rows measured on `backbone` to a report measured on another base (rebuilt since)."""
    current = base_facts(backbone)
    if not recorded or not current:
        return
    if recorded.get("weights_sha256") != current.get("weights_sha256"):
        raise ValueError(
            f"the report was measured on a base with weights {str(recorded.get('weights_sha256'))[:12]}… "
            f"({recorded.get('preset') or 'custom'}), but {backbone} now holds {str(current['weights_sha256'])[:12]}… "
            f"({current.get('preset') or 'custom'}): regenerate the report with `steprune eval --suite world`"
        )
