"""A short schema-fuzzer run: /openapi.json documents every answer the service gives."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

FUZZER = Path(__file__).resolve().parents[2] / "benchmarks" / "schema_fuzz.py"


def test_a_short_schema_fuzz_finds_no_violations_and_no_server_errors(tmp_path: Path) -> None:
    out = tmp_path / "fuzz.json"
    command = [sys.executable, str(FUZZER), "--max-examples", "5", "--json", str(out)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert out.is_file(), run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["failures"]["response_schema_conformance"] == 0, report["failure_details"]
    assert report["failures"]["not_a_server_error"] == 0, report["failure_details"]
    assert run.returncode == 0 and not report["errors"], run.stdout[-3000:]
    checked = report["checks"]["response_schema_conformance"]["success"]
    assert checked >= 100, f"only {checked} responses checked"
    answered = {op: set(statuses) for op, statuses in report["statuses"].items()}
    for operation in (
        "GET /v1/products/{product_id}/similar",
        "GET /v1/products/{product_id}",
        "GET /v1/products",
    ):
        assert "200" in answered[operation], answered  # real ids reach the real answers
