"""``dynaray bench gateway``, tiny: uploads go through from another process, validation has its rows, the JSON its
fields. (Not yet in the verb table: run through the module's own parser.)"""

import argparse
import json
import subprocess
import sys

from system.bench import gateway
from tests.system.bench.markdown import number, table_rows


def test_bench_gateway_measures_uploads_and_validation(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    gateway.add_arguments(parser)
    out_json = tmp_path / "gateway.json"
    args = parser.parse_args(["--clients", "2", "--seconds", "1", "--rows", "20", "--json", str(out_json)])
    assert gateway.run(args) == 0
    out = capsys.readouterr().out
    (cells,) = [[c.strip() for c in line.strip().strip("|").split("|")] for line in out.splitlines()
                if line.startswith("| ") and "200:" in line]
    uploads_per_s, rows_per_s = number(cells[0]), number(cells[1])
    assert uploads_per_s > 0 and abs(rows_per_s - 20 * uploads_per_s) <= 20
    for rows in ("1,000", "10,000"):
        assert [r[1] for r in table_rows(out, rows)] == ["none", "zstd"]
    report = json.loads(out_json.read_text())
    uploads = report["uploads"]
    assert uploads["uploads"] > 0 and set(uploads["statuses"]) == {"200"}
    assert uploads["latency_ms"]["p50"] <= uploads["latency_ms"]["p99"]
    assert all(v["ms_per_body_mb"] > 0 for v in report["validation"])


def test_the_bench_imports_only_the_harness_and_nothing_heavy():
    code = ("import sys, system.bench.gateway; "
            "print(sorted(m for m in sys.modules if m.startswith('system.bench.') or m in ('torch', 'ray', "
            "'gymnasium', 'aiohttp')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert eval(out) == ["system.bench.gateway", "system.bench.harness"]
