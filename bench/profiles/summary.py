"""``bench/results/summary_e2e.md``: the e2e figures, the level table, the profile digests and
the hand-written analysis (``bench/profiles/analysis.md``: what bounds throughput, what was
done about the top costs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

ANALYSIS = Path(__file__).resolve().parent / "analysis.md"


def _row(lv: dict[str, Any]) -> str:
    cpu = lv.get("cpu") or {}
    return (f"| {lv['offered_tx_per_s']} | {lv['committed_tx_per_s']} | {lv['p50_ms']} | {lv['p99_ms']} | "
            f"{lv['lost']} | {lv['mvcc_conflicts']} | {lv.get('txs_per_block', '')} | "
            f"{lv.get('load_average_1m', '')} | "
            f"{cpu.get('cores_busy', '')} | {cpu.get('total_ms', '')} | "
            f"{'yes' if lv.get('pass') else 'no'} |")


def _by_value(shares: Any) -> list[tuple[str, float]]:
    """A ``name -> share`` mapping largest first (the JSON file stores keys sorted by name)."""
    return sorted((shares or {}).items(), key=lambda kv: -kv[1])


def _layer_lines(lay: Any) -> list[str]:
    """The perf breakdown (``bench.profiles.layers``) as a table, or why it is missing."""
    if not isinstance(lay, dict):
        return []
    head = ["### The machine's CPU by layer at peak (perf, system-wide)", ""]
    if lay.get("error"):
        return [*head, f"not measured: {lay['error']}", ""]
    ms = lay.get("layers_ms_per_tx") or {}
    kms = lay.get("kernel_ms_per_tx") or {}
    window, committed = lay.get("window_s") or 0, lay.get("committed_in_window") or 0
    rate = committed / window if window else 0.0
    lagging = rate < 0.95 * float(lay.get("tx_per_s") or 0)
    out = [*head,
           f"{lay.get('samples')} samples in {window} s at {lay.get('tx_per_s')} tx/s offered, "
           f"{committed} txs committed in the window ({rate:.1f} tx/s); busy CPU "
           f"{lay.get('busy_cpu_ms_per_tx')} ms per tx (the /proc meter over the same window: "
           f"{lay.get('proc_cpu_ms_per_tx', '?')} ms; idle samples {lay.get('idle_share')})."
           + (" Commits lagged the offered load in this window (the saturation edge), so its ms per "
              "tx are an upper bound; the shares are the steady figure." if lagging else ""), "",
           "| layer (where the sample landed) | share of busy CPU | ms per tx |", "|---|---|---|"]
    out += [f"| {k} | {100 * v:.1f} % | {ms.get(k, '')} |" for k, v in _by_value(lay.get("layers"))]
    out += ["", "| kernel: what the process was doing | share of busy CPU | ms per tx |", "|---|---|---|"]
    out += [f"| {k} | {100 * v:.1f} % | {kms.get(k, '')} |" for k, v in _by_value(lay.get("kernel"))]
    procs = lay.get("by_process") or {}
    if procs:
        out += ["", "By process (share of busy CPU; its top layers): " + "; ".join(
            f"{name} {100 * d['share']:.1f} % ("
            + ", ".join(f"{k} {100 * v:.0f} %" for k, v in _by_value(d["layers"])) + ")"
            for name, d in sorted(procs.items(), key=lambda kv: -float(kv[1]["share"])))]
    return [*out, ""]


def write_summary(result: dict[str, Any], path: Path) -> Path:
    """Write the markdown summary of one e2e run."""
    lines = ["# rxchain end-to-end benchmark", ""]
    m = result.get("machine", {})
    lines.append(f"Machine: {m.get('cores', '?')} cores, Python {m.get('python', '?')}, "
                 f"commit {str(m.get('git_commit', '?'))[:12]}; run took {result.get('duration_s')} s.")
    lines += ["", "## Figures", ""]
    for k in ("committed_tx_per_s", "p50_ms", "p99_ms", "half_rate_tx_per_s", "mvcc_conflict_share",
              "crypto_bound_tx_per_s", "ratio_to_crypto_bound"):
        lines.append(f"* `{k}`: {result.get(k)}")
    c = result.get("crypto", {})
    lines.append(f"* signatures per tx: {c.get('signs_per_tx')} sign + {c.get('verifies_per_tx')} verify; "
                 f"measured {c.get('sign_per_s')} sign/s, {c.get('verify_per_s')} verify/s per core")
    for label, key in (("half rate", "cpu_s_per_tx_half_rate"), ("peak", "cpu_s_per_tx_peak")):
        cpu = result.get(key) or {}
        if cpu:
            kinds = ", ".join(f"{k} {v}" for k, v in cpu.get("by_kind_ms", {}).items())
            lines.append(f"* CPU ms per committed tx at {label}: {kinds}; total {cpu.get('total_ms')} ms "
                         f"({cpu.get('cores_busy')} cores busy)")
            procs = ", ".join(f"{k} {v}" for k, v in cpu.get("by_process_ms", {}).items())
            lines.append(f"  * by process: {procs}")
            sb = cpu.get("sandbox_workers_ms") or {}
            if sb:
                by = ", ".join(f"{k} {v}" for k, v in sb.get("by_peer", {}).items())
                lines.append(f"  * of which sandbox workers (contract execution): {sb.get('total')} ms; {by}")
            sw = cpu.get("context_switches_per_tx") or {}
            if sw:
                by = ", ".join(f"{k} {v}" for k, v in sw.get("by_process", {}).items())
                lines.append(f"  * context switches per tx: {sw.get('total')} in all ({sw.get('voluntary')} voluntary: "
                             f"hand-offs and waits; {sw.get('involuntary')} involuntary: preemptions); {by}")
    lines += ["", "## Load levels", "",
              "| offered tx/s | committed tx/s | p50 ms | p99 ms | lost | MVCC | tx/block | machine load | "
              "cores busy | CPU ms/tx | pass |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [_row(lv) for lv in result.get("levels", [])]
    lines += ["", "Latency against offered load: `e2e_latency.svg`.", "", "## Profiles at peak (py-spy)", ""]
    prof = result.get("profile") or {}
    for name, d in prof.items():
        if not isinstance(d, dict) or "top_self" not in d:
            continue
        lines.append(f"### {name} ({d.get('samples')} samples)")
        lines.append("")
        if d.get("buckets"):
            lines.append("buckets: " + "; ".join(f"{b} {100 * s:.0f}%" for b, s in d["buckets"][:8]))
            lines.append("")
        lines.append("self: " + "; ".join(f"{f} {100 * s:.1f}%" for f, s in d["top_self"][:8]))
        lines.append("")
        lines.append("inclusive: " + "; ".join(f"{f} {100 * s:.1f}%" for f, s in d["top_inclusive"][:10]))
        lines.append("")
    sw = prof.get("thread_switches") if isinstance(prof, dict) else None
    if isinstance(sw, dict) and sw.get("top"):
        lines += ["### Voluntary context switches per committed tx at peak (thread hand-offs)", "",
                  f"{sw.get('per_tx_total')} in all; by process: "
                  + ", ".join(f"{k} {v}" for k, v in sw.get("per_tx_by_process", {}).items()), "",
                  "| process | thread: where it waits or runs | switches per tx |", "|---|---|---|"]
        lines += [f"| {r['process']} | {r['thread']} | {r['per_tx']} |" for r in sw["top"][:15]]
        lines.append("")
    if isinstance(sw, dict) and sw.get("cpu_top"):
        lines += ["### CPU per committed tx at peak, thread by thread", "",
                  f"{sw.get('cpu_ms_per_tx_total')} ms in all (threads alive through the whole "
                  "profiled level and its drain); by process: "
                  + ", ".join(f"{k} {v}" for k, v in sw.get("cpu_ms_per_tx_by_process", {}).items()), "",
                  "| process | thread: where it waits or runs | CPU ms per tx |", "|---|---|---|"]
        lines += [f"| {r['process']} | {r['thread']} | {r['cpu_ms_per_tx']} |" for r in sw["cpu_top"][:15]]
        lines.append("")
    lines += _layer_lines(prof.get("layers") if isinstance(prof, dict) else None)
    if ANALYSIS.exists():
        lines += ["## Analysis", "", ANALYSIS.read_text().strip(), ""]
    path.write_text("\n".join(lines) + "\n")
    return path
