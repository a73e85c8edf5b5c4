"""Print the fault and adversarial suites' result tables as Markdown.

``python -m bench.adversarial_report`` reads what the test suites wrote:
``bench/results/adversarial.json`` (tests/adversarial), ``bench/results/chaos.json`` (the
short chaos run of ``make test``) and ``bench/results/chaos_long.json`` (``make chaos``).
"""

from __future__ import annotations

import json
import sys
from typing import Any

from bench.common import RESULTS


def _load(name: str) -> dict[str, Any] | None:
    path = RESULTS / name
    if not path.exists():
        return None
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def adversarial_table(doc: dict[str, Any]) -> str:
    """Markdown table of adversarial cases."""
    lines = [f"### Adversarial cases: {doc['passed']}/{doc['total']} refused cleanly", "",
             "| case | target | reason | nothing written | still serving | ok |", "|---|---|---|---|---|---|"]
    for c in doc["cases"]:
        lines.append(f"| {c['case']} | {c['target']} | {c['reason']} | {c['nothing_written']} | "
                     f"{c['still_serving']} | {'yes' if c['passed'] else 'NO'} |")
    return "\n".join(lines)


def chaos_table(title: str, doc: dict[str, Any]) -> str:
    """Markdown summary of a chaos run."""
    lines = [f"### {title} (seed {doc['seed']}, small disk: {doc['small_disk']}): "
             f"{'OK' if doc['ok'] else 'FAILED'}", "",
             "| metric | value |", "|---|---|"]
    for key in ("acknowledged", "found", "submitted", "txs_in_ledger", "resubmissions"):
        lines.append(f"| {key} | {doc[key]} |")
    for key in ("lost", "duplicated", "unknown", "divergent_peers", "lagging", "double_dispense",
                "settlement_violations"):
        lines.append(f"| {key} | {len(doc[key])} |")
    lines.append(f"| faults by kind | {', '.join(f'{k}={v}' for k, v in sorted(doc['faults_by_kind'].items()))} |")
    lines += ["", "| t (s) | fault | target | 1st commit after fault (s) | after heal (s) | note |",
              "|---|---|---|---|---|---|"]
    for f in doc["faults"]:
        during = "n/a" if f["during_s"] is None else f"{f['during_s']:.2f}"
        rec = "n/a" if f["recovered_s"] is None else f"{f['recovered_s']:.2f}"
        lines.append(f"| {f['at_s']:.1f} | {f['kind']} | {f['target']} | {during} | {rec} | {f['note']} |")
    return "\n".join(lines)


def main() -> int:
    """Print every table that has results."""
    out = []
    adv = _load("adversarial.json")
    if adv:
        out.append(adversarial_table(adv))
    for name, title in (("chaos.json", "Chaos (short)"), ("chaos_long.json", "Chaos (long)")):
        doc = _load(name)
        if doc:
            out.append(chaos_table(title, doc))
    if not out:
        print("no results yet: run `make test` (or `make chaos`) first", file=sys.stderr)
        return 1
    print("\n\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
