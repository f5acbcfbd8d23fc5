"""`make bench-gpu` rehearsed on a CPU: --device cpu --smoke writes the Table-3 and scaling reports."""

from __future__ import annotations

import json

from steprune.eval.bench_gpu import main
from steprune.pruners import PRUNERS


def test_cpu_smoke_writes_table3_pointer_and_scaling_reports(tmp_path):
    assert main(["--device", "cpu", "--smoke", "--out-dir", str(tmp_path)]) == 0
    table = json.loads((tmp_path / "table3_cpu.json").read_text())
    assert table["hardware"] and table["device"] == "cpu"
    rows = table["rows"]
    assert rows[0]["method"] == "vanilla" and all(r["latency_ms"] > 0 for r in rows)
    methods = set(PRUNERS.names()) - {"identity"}
    assert {(r["method"], r["budget"]) for r in rows[1:]} == {
        (m, b) for m in methods for b in {r["budget"] for r in rows[1:]}
    }
    assert len({r["budget"] for r in rows[1:]}) == 3
    assert all(r["fast_same_picks"] for r in table["pointer_loop"])
    text = (tmp_path / "table3_cpu.md").read_text()
    assert f"Hardware: {table['hardware']}" in text and "The pointer loop on this device" in text
    scaling = json.loads((tmp_path / "scaling_cpu.json").read_text())
    assert scaling["rows"] and (tmp_path / "scaling_cpu.md").is_file() and (tmp_path / "scaling_cpu.png").is_file()
