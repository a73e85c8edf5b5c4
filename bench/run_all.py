"""``make bench``: run every benchmark module and write a markdown summary.

Each ``bench/*_bench.py`` runs as its own process (so one crash does not stop the
others) and writes ``bench/results/<name>.json``; this runner then collects the JSON
files into ``bench/results/summary.md``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from bench.common import RESULTS, machine_facts

BENCH_DIR = Path(__file__).resolve().parent
TIMEOUT_S = 1800


def summary_lines(doc: dict[str, object]) -> list[str]:
    """A result's scalar figures as bullets; a group of scalars (e.g. ``small_blocks``) as
    ``group.key`` bullets; deeper structures are left to the benchmark's own summary."""
    out: list[str] = []
    for key, value in sorted(doc.items()):
        if key in ("machine", "benchmark") or isinstance(value, list):
            continue
        if isinstance(value, dict):
            if all(not isinstance(v, dict | list) for v in value.values()):
                out += [f"* `{key}.{k}`: {v}" for k, v in sorted(value.items())]
            continue
        out.append(f"* `{key}`: {value}")
    return out


def main() -> int:
    """Run all benchmarks; exit non-zero if any failed."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    modules = sorted(p.stem for p in BENCH_DIR.glob("*_bench.py"))
    failures: list[str] = []
    durations: dict[str, float] = {}
    for mod in modules:
        print(f"== bench.{mod}", flush=True)
        t0 = time.monotonic()
        try:
            proc = subprocess.run([sys.executable, "-m", f"bench.{mod}"], timeout=TIMEOUT_S, check=False)
            ok = proc.returncode == 0
        except subprocess.TimeoutExpired:
            ok = False
        durations[mod] = time.monotonic() - t0
        if not ok:
            failures.append(mod)
            print(f"!! bench.{mod} failed", flush=True)
    lines = ["# rxchain benchmark summary", ""]
    facts = machine_facts()
    lines.append(", ".join(f"{k}: {v}" for k, v in facts.items()))
    lines.append("")
    for path in sorted(RESULTS.glob("*.json")):
        doc = json.loads(path.read_text())
        lines.append(f"## {path.stem}")
        lines.append("")
        lines += summary_lines(doc)
        lines.append("")
    if failures:
        lines.append(f"Failed: {', '.join(failures)}")
    (RESULTS / "summary.md").write_text("\n".join(lines) + "\n")
    print((RESULTS / "summary.md").read_text())
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
