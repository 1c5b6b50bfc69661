"""Targets, the printed table, the JSON record and the PNG plot of a benchmark run."""

from __future__ import annotations

import json
import math
import os
from typing import Any

from bench.scenarios import NO_ORIGINAL

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
#: Run-to-run noise of a throughput ratio on this kind of machine (PERF-NOTES).
RATIO_NOISE = 0.03
#: Idle Redis traffic allowed besides blocking calls: a heartbeat of a few commands
#: every few seconds, per daemon (not per type); and the slack between two 10 s
#: windows caught at different heartbeat phases.
HEARTBEAT_PER_S = 2.0
#: Cores taken by other processes during a timed run above which figures are suspect.
BUSY_CORES = 0.25
HEARTBEAT_PHASE_PER_S = 0.5
#: An empty cell: a figure the run could not take (the original crashed in that drain).
NAN = float("nan")


def _target(name: str, value: float, limit: str, ok: bool | None) -> dict[str, Any]:
    """One row of the targets table; ok None means reported, not judged."""
    return {"target": name, "value": value, "limit": limit, "pass": ok}


def targets(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, pass/fail, for the scenarios that ran."""
    scn = doc["scenarios"]
    out: list[dict[str, Any]] = []
    codes = doc["sigterm"]["exit_codes"]
    if codes:
        bad = [c for c in codes if c != 0]
        out.append(
            _target(
                "daemon exits 0 on SIGTERM when idle (stops)",
                len(codes) - len(bad),
                f"== {len(codes)} (codes seen: {sorted(set(codes), key=str)})",
                not bad,
            )
        )
    tput = scn.get("throughput", {}).get("by_workers", {})
    if "8" in tput:
        r8 = tput["8"]["ratio"]
        out.append(_target("throughput Workers=8 / raw", r8, ">= 0.80", r8 >= 0.80))
        if "256" in tput:
            r256 = tput["256"]["ratio"]
            out.append(
                _target(
                    "throughput ratio Workers=256 vs 8",
                    r256,
                    f">= {r8:.2f} (ratio at 8) - {RATIO_NOISE} noise",
                    r256 >= r8 - RATIO_NOISE,
                )
            )
    for w in ("8", "64"):
        r = tput.get(w, {})
        if "ours_to_original" in r:
            v = r["ours_to_original"]
            out.append(_target(f"throughput Workers={w} / original", v, ">= 1.05", v >= 1.05))
    latency = scn.get("latency", {})
    if "original" in latency:
        p99, mx = latency["ours"]["p99_ms"], latency["ours"]["max_ms"]
        limit = latency["original"]["p99_ms"]
        out.append(_target("latency p99 (ms) vs original", p99, f"<= {limit:.2f}", p99 <= limit))
        out.append(_target("latency max (ms)", mx, "< 10", mx < 10))
    lat = latency.get("ours")
    if lat:
        out.append(_target("latency p50 (ms)", lat["p50_ms"], "<= 1.3", lat["p50_ms"] <= 1.3))
        out.append(_target("latency p99 (ms)", lat["p99_ms"], "<= 2.0", lat["p99_ms"] <= 2.0))
        out.append(_target("latency lost tasks", lat["missing"], "== 0", lat["missing"] == 0))
    if "idle" in scn:
        t = scn["idle"]["types"]
        idle, one = scn["idle"]["by_types"][str(t)], scn["idle"]["by_types"]["1"]
        cpu, other, blocking = idle["cpu_percent"], idle["other_per_s"], idle["blocking_per_s"]
        out.append(_target(f"idle CPU, {t} types (% of one core)", cpu, "<= 0.2", cpu <= 0.2))
        out.append(
            _target(
                f"idle non-blocking Redis commands/s, {t} types",
                other,
                f"<= {HEARTBEAT_PER_S:g} and <= 1 type's {one['other_per_s']:.2f} + "
                f"{HEARTBEAT_PHASE_PER_S:g} (heartbeat, not per type)",
                other <= HEARTBEAT_PER_S and other <= one["other_per_s"] + HEARTBEAT_PHASE_PER_S,
            )
        )
        out.append(
            _target(
                f"idle blocking calls/s, {t} types",
                blocking,
                f"<= {t} (one per type per second)",
                blocking <= t,
            )
        )
    cost = scn.get("cost", {}).get("by_workers", {})
    if "8" in cost:
        c = cost["8"]["commands_per_task"]
        out.append(_target("Redis commands per task (Workers=8)", c, "<= 3", c <= 3.0))
    if "256" in cost:
        rss = cost["256"]["peak_rss_mb"]
        out.append(_target("peak RSS at Workers=256 (MB)", rss, "< 60", rss < 60))
        if "original_cpu_per_1000_s" in cost["256"]:
            out.append(
                _target(
                    "peak RSS at Workers=256 (MB), goal beside the original", rss, "< 45", rss < 45
                )
            )
    for w, c in cost.items():
        if "original_cpu_per_1000_s" in c:
            v, limit = c["ours_cpu_per_1000_s"], c["original_cpu_per_1000_s"]
            out.append(
                _target(
                    f"daemon CPU s per 1000 tasks (Workers={w}) vs original",
                    v,
                    f"<= {limit:.3f}",
                    v <= limit,
                )
            )
    for w in ("8", "256"):
        if w in cost:
            v = cost[w]["ours_cpu_per_1000_s"]
            out.append(
                _target(
                    f"daemon CPU s per 1000 tasks (Workers={w})",
                    v,
                    "report; Go original 0.15-0.26",
                    None,
                )
            )
    scale = scn.get("scale")
    if scale:
        a = scale["alive"]
        out.append(
            _target(
                f"{a['children']} children alive at once (peak seen)",
                a["peak_children"],
                f">= {a['children']}",
                a["peak_children"] >= a["children"],
            )
        )
    ours = single_core_ceilings(scn).get("ours")
    if ours:
        out.append(
            _target(
                "single-core ceiling of one daemon (tasks/s, lowest of the drains)",
                min(rate for _, rate in ours),
                "report; past it, run another daemon",
                None,
            )
        )
    scaleout = scn.get("scaleout")
    if scaleout:
        c = scaleout["ceiling"]
        out.append(
            _target(
                f"scale-out ceiling here (tasks/s, {c['daemons']} daemons)",
                c["rate"],
                "report",
                None,
            )
        )
        for count, r in scaleout["by_daemons"].items():
            if count != "1":
                out.append(
                    _target(
                        f"scale-out fairness, {count} daemons (smallest share x {count})",
                        r["fairness"],
                        "report; 1 is even",
                        None,
                    )
                )
    for name in ("throughput", "scale"):
        for group in ("by_workers", "by_types"):
            for k, r in scn.get(name, {}).get(group, {}).items():
                if r["failed"]:
                    out.append(_target(f"{name} {k}: failed tasks", r["failed"], "== 0", False))
    busy = [
        r["other_load_cores"]
        for name, group in (
            ("throughput", "by_workers"),
            ("scale", "by_types"),
            ("scaleout", "by_daemons"),
        )
        for r in scn.get(name, {}).get(group, {}).values()
    ]
    if busy:
        worst = max(busy)
        out.append(
            _target(
                "other load during timed runs (cores)",
                worst,
                f"<= {BUSY_CORES}",
                worst <= BUSY_CORES,
            )
        )
    return out


def _fmt(v: float) -> str:
    if isinstance(v, float) and math.isnan(v):
        return "-"
    if isinstance(v, int) or float(v).is_integer() and abs(v) >= 10:
        return f"{int(v)}"
    return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"


def _table(title: str, header: list[str], rows: list[list[Any]]) -> str:
    cells = [header] + [[c if isinstance(c, str) else _fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = [f"\n{title}"]
    for j, r in enumerate(cells):
        lines.append("  " + "  ".join(c.rjust(widths[i]) for i, c in enumerate(r)))
        if j == 0:
            lines.append("  " + "  ".join("-" * w for w in widths))
    return "\n".join(lines)


#: Who is measured in the throughput and scale drains, and the key of its CPU figure.
WHO = {
    "ours": "ours_cpu_per_1000_s",
    "original": "original_cpu_per_1000_s",
    "raw": "raw_cpu_per_1000_s",
}


def _cases(scn: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The drains of the throughput and scale scenarios, each with its label."""
    return [
        *((f"Workers {w}", r) for w, r in scn.get("throughput", {}).get("by_workers", {}).items()),
        *((f"{t} types", r) for t, r in scn.get("scale", {}).get("by_types", {}).items()),
    ]


def single_core_ceilings(scn: dict[str, Any]) -> dict[str, list[tuple[str, float]]]:
    """Tasks/s each process would reach with one core of its own, per drain.

    A daemon's own work runs on one core (one reactor thread; its spawning threads
    wait in the kernel), so 1000 over its CPU seconds per 1000 tasks is the rate
    past which a second daemon, not a bigger machine, is what helps.
    """
    out: dict[str, list[tuple[str, float]]] = {}
    for who, key in WHO.items():
        by_case = [(case, 1000 / r[key]) for case, r in _cases(scn) if r.get(key, 0) > 0]
        if by_case:
            out[who] = by_case
    return out


def _scaleout(s: dict[str, Any]) -> list[str]:
    """The scale-out table and what it says of the ceiling and of one Redis."""
    rows = [
        [
            count,
            r["rate"],
            r["rate"] / s["by_daemons"][min(s["by_daemons"], key=int)]["rate"],
            r["fairness"],
            " / ".join(" ".join(f"{x:.0%}" for x in shares) for shares in r["shares"]),
            r["commands_per_task"],
            r["redis_cpu_us_per_task"],
            r["daemon_cpu_per_1000_s"],
            r["busy_cores"],
            r["other_load_cores"],
        ]
        for count, r in s["by_daemons"].items()
    ]
    c, redis = s["ceiling"], s["redis"]
    return [
        _table(
            f"scaleout: daemons with Workers {s['workers']} each on one Redis, one queue, "
            f"N={s['entries']} /bin/true, {s['repeats']} alternations",
            [
                "daemons",
                "tasks/s",
                "x 1 daemon",
                "fairness",
                "shares",
                "cmds/task",
                "Redis CPU us/task",
                "daemons' CPU s/1000",
                "busy cores",
                "other load",
            ],
            rows,
        ),
        "  (fairness: the smallest share times the daemons; 1 is even)",
        f"  ceiling here: {c['rate']:.0f} tasks/s with {c['daemons']} daemon(s), "
        f"{c['busy_cores']:.2f} of {c['cores']} cores busy",
        f"  one Redis core, on paper: {redis['commands_per_task']:.2f} commands and "
        f"{redis['cpu_us_per_task']:.0f} us per task ({redis['commands_per_s_per_core']:.0f} "
        f"commands/s) is {redis['tasks_per_s_per_core']:.0f} tasks/s: "
        f"{redis['daemons_per_core']:.0f} daemons at one daemon's rate here, "
        f"{redis['daemons_per_core_at_their_ceiling']:.0f} at their single-core ceiling "
        f"({redis['daemon_single_core_ceiling']:.0f} tasks/s each), or "
        f"{redis['hosts_per_core']:.0f} hosts like this one at their ceiling",
    ]


def render(doc: dict[str, Any]) -> str:
    """The human-readable summary of a run."""
    scn = doc["scenarios"]
    m = doc["machine"]
    parts = [
        f"Goophry benchmark {doc['started']}  ({doc['duration_s']:.0f} s; "
        f"{m['cores']} cores, Python {m['python']}, Twisted {m['twisted']}, "
        f"Redis {m['redis']}; load {m['loadavg']})",
        f"daemon: {doc['daemon_cmd']}",
    ]
    parts.append(f"original: {doc.get('original_cmd') or NO_ORIGINAL}")
    if "throughput" in scn:
        t = scn["throughput"]
        # A drain the original crashed in leaves its cells empty, not the column.
        with_original = any("original_rate" in r for r in t["by_workers"].values())
        rows = []
        for w, r in t["by_workers"].items():
            row = [w, r["raw_rate"], r["ours_rate"], r["ratio"]]
            row.append(" ".join(f"{x:.2f}" for x in r["pair_ratios"]))
            if with_original:
                row[2:2] = [r.get("original_rate", NAN)]
                row += [
                    r.get("ours_to_original", NAN),
                    " ".join(f"{x:.2f}" for x in r.get("original_pair_ratios", [])) or "-",
                ]
            rows.append([*row, r["other_load_cores"]])
        header = ["Workers", "raw/s", "ours/s", "ours/raw", "per pair"]
        if with_original:
            header[2:2] = ["original/s"]
            header += ["ours/original", "per pair"]
        parts.append(
            _table(
                f"throughput: N={t['n']} /bin/true, {t['repeats']} alternations",
                [*header, "other load"],
                rows,
            )
        )
    if "cost" in scn:
        rows = [
            [
                w,
                c["ours_cpu_per_1000_s"],
                c["raw_cpu_per_1000_s"],
                c["cpu_ratio"],
                c["commands_per_task"],
                c["peak_rss_mb"],
                " ".join(f"{k}={v:.2f}" for k, v in c["commands_per_task_by_name"].items()),
            ]
            for w, c in scn["cost"]["by_workers"].items()
        ]
        parts.append(
            _table(
                "cost per task (Go original, earlier runs: 0.15-0.28 CPU s per 1000 tasks)",
                [
                    "Workers",
                    "CPU s/1000",
                    "raw CPU s/1000",
                    "x raw",
                    "cmds/task",
                    "peak RSS MB",
                    "commands per task",
                ],
                rows,
            )
        )
        originals = {
            w: c for w, c in scn["cost"]["by_workers"].items() if "original_cpu_per_1000_s" in c
        }
        if originals:
            rows = [
                [
                    w,
                    c["original_cpu_per_1000_s"],
                    c["ours_cpu_per_1000_s"],
                    c["ours_cpu_per_1000_s"] / c["original_cpu_per_1000_s"],
                    c["original_peak_rss_mb"],
                    c["peak_rss_mb"],
                    c["peak_rss_mb"] / c["original_peak_rss_mb"],
                ]
                for w, c in originals.items()
            ]
            parts.append(
                _table(
                    "cost beside the original, same run",
                    [
                        "Workers",
                        "original CPU s/1000",
                        "ours CPU s/1000",
                        "ours/original",
                        "original RSS MB",
                        "ours RSS MB",
                        "ours/original",
                    ],
                    rows,
                )
            )
    if "latency" in scn:
        lat = scn["latency"]
        rows = [
            [
                who,
                lat[who]["p50_ms"],
                lat[who]["p90_ms"],
                lat[who]["p99_ms"],
                lat[who]["max_ms"],
                lat[who]["n"],
                lat[who]["missing"],
                lat[who].get("other_load_cores", float("nan")),
            ]
            for who in ("original", "ours", "blpop", "floor")
            if who in lat
        ]
        vs_original = (
            f"; ours/original p50 {lat['ratio_p50_to_original']:.2f}, "
            f"p99 {lat['ratio_p99_to_original']:.2f}"
            if "original" in lat
            else ""
        )
        parts.append(
            _table(
                f"latency push -> start (ms) at {lat['rate_per_s']:.0f}/s; ours/BLPOP p50 "
                f"{lat['ratio_p50_to_blpop']:.2f}, p99 {lat['ratio_p99_to_blpop']:.2f}; "
                f"ours - floor p50 {lat['ours_over_floor_p50_ms']:.2f} ms{vs_original}",
                ["who", "p50", "p90", "p99", "max", "n", "lost", "other load"],
                rows,
            )
        )
    if "idle" in scn:
        i = scn["idle"]
        rows = [
            [
                t,
                r["cpu_percent"],
                r["cpu_percent_ticks"],
                r["commands_per_s"],
                r["blocking_per_s"],
                r["other_per_s"],
                " ".join(f"{k}={v:.2f}" for k, v in r["commands_per_s_by_name"].items()) or "-",
            ]
            for t, r in i["by_types"].items()
        ]
        parts.append(
            _table(
                f"idle: Workers {i['workers']} per type, {i['settle_s']:.0f} s settle, then "
                f"{next(iter(i['by_types'].values()))['seconds']:.0f} s measured",
                [
                    "types",
                    "CPU % (schedstat)",
                    "CPU % (ticks)",
                    "cmds/s",
                    "blocking/s",
                    "other/s",
                    "by name (/s)",
                ],
                rows,
            )
        )
    if "scale" in scn:
        s = scn["scale"]
        a = s["alive"]
        cases = [(f"{t} types", r) for t, r in s["by_types"].items()]
        cases.append((f"{a['children']} alive", a))
        with_original = any("original_rate" in r for _, r in cases)
        rows = []
        for case, r in cases:
            row = [case, r["concurrency"], r["raw_rate"], r["ours_rate"], r["ratio"]]
            cpu = [r["raw_cpu_per_1000_s"], r["ours_cpu_per_1000_s"]]
            if with_original:
                row[3:3] = [r.get("original_rate", NAN)]
                row.append(r.get("ours_to_original", NAN))
                cpu[1:1] = [r.get("original_cpu_per_1000_s", NAN)]
            rows.append([*row, *cpu, r["other_load_cores"]])
        header = ["case", "raw conc.", "raw/s", "ours/s", "ours/raw"]
        cpu_header = ["raw CPU s/1000", "ours CPU s/1000"]
        if with_original:
            header[3:3] = ["original/s"]
            header.append("ours/original")
            cpu_header[1:1] = ["original CPU s/1000"]
        parts.append(
            _table(
                f"scale: Workers {s['workers_per_type']} per type; alive: {a['script']}, "
                f"ideal {a['ideal_rate']:.0f}/s, peak children seen {a['peak_children']}",
                [*header, *cpu_header, "other load"],
                rows,
            )
        )
    ceilings = single_core_ceilings(scn)
    if ceilings:
        parts.append(
            "\nsingle-core ceiling of one process (1000 / its CPU s per 1000 tasks, its "
            "scripts' CPU left out; tasks/s):"
        )
        for who, by_case in ceilings.items():
            rates = [rate for _, rate in by_case]
            parts.append(
                f"  {who:>8}: {min(rates):.0f}-{max(rates):.0f}  ("
                + ", ".join(f"{case} {rate:.0f}" for case, rate in by_case)
                + ")"
            )
    if "scaleout" in scn:
        parts.extend(_scaleout(scn["scaleout"]))
    rows = [
        [
            t["target"],
            t["value"],
            t["limit"],
            {True: "PASS", False: "FAIL", None: "info"}[t["pass"]],
        ]
        for t in doc["targets"]
    ]
    parts.append(_table("targets", ["target", "value", "limit", ""], rows))
    parts.append(
        "\nother load: cores used by processes outside the benchmark during a timed run (max). "
        f"Above {BUSY_CORES} the ratios are unreliable: a busy machine favours the daemon's "
        "threads over the single-threaded raw loop."
    )
    parts.append("\ntimings: " + ", ".join(f"{k} {v:.0f} s" for k, v in doc["timings_s"].items()))
    if doc["errors"]:
        parts.append("ERRORS:\n" + "\n".join(f"  - {k}: {v}" for k, v in doc["errors"].items()))
    if doc["notes"]:
        parts.append("notes:\n" + "\n".join(f"  - {n}" for n in doc["notes"]))
    return "\n".join(parts)


def write(doc: dict[str, Any], stamp: str, results: str = RESULTS) -> tuple[str, str]:
    """<results>/<stamp>.json, latest.json and latest.png; returns (json path, png path)."""
    os.makedirs(results, exist_ok=True)
    path = os.path.join(results, f"{stamp}.json")
    text = json.dumps(doc, indent=1, sort_keys=False)
    for p in (path, os.path.join(results, "latest.json")):
        with open(p + ".tmp", "w") as f:
            f.write(text + "\n")
        os.replace(p + ".tmp", p)
    return path, plot(doc, os.path.join(results, "latest.png"))


def plot(doc: dict[str, Any], path: str) -> str:
    """Throughput vs Workers (ours beside raw) and the latency distribution."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scn = doc["scenarios"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
    tput = scn.get("throughput", {}).get("by_workers", {})
    if tput:
        ws = [int(w) for w in tput]
        x = range(len(ws))
        raw = [tput[str(w)]["raw_rate"] for w in ws]
        ours = [tput[str(w)]["ours_rate"] for w in ws]
        orig = [tput[str(w)].get("original_rate", 0.0) for w in ws]
        ax1.bar([i - 0.2 for i in x], raw, 0.4, label="raw posix_spawn loop", color="0.6")
        ax1.bar([i + 0.2 for i in x], ours, 0.4, label="goophry", color="tab:blue")
        if any(orig):
            ax1.plot(list(x), orig, "D", color="tab:orange", label="Go original")
        for i, w in enumerate(ws):
            ax1.annotate(
                f"{tput[str(w)]['ratio']:.2f}",
                (i + 0.2, ours[i]),
                ha="center",
                va="bottom",
                fontsize=9,
            )
        ax1.set_xticks(list(x), [str(w) for w in ws])
        ax1.set_xlabel("Workers (raw: same concurrency)")
        ax1.set_ylabel("tasks/s (/bin/true)")
        ax1.set_title("throughput (label: ratio to raw)")
        ax1.set_ylim(0, max(raw + ours + orig) * 1.25)
        ax1.legend(loc="upper left")
    lat = scn.get("latency")
    if lat:
        labels = {"ours": "goophry", "blpop": "plain BLPOP spawner", "floor": "bare spawn"}
        if "original" in lat:
            labels["original"] = "Go original"
        for who, label in labels.items():
            xs = sorted(lat[who]["samples_ms"])
            if xs:
                ys = [(i + 1) / len(xs) for i in range(len(xs))]
                ax2.step(
                    xs,
                    ys,
                    where="post",
                    label=f"{label} (p50 {lat[who]['p50_ms']:.2f}, p99 "
                    f"{lat[who]['p99_ms']:.2f} ms)",
                )
        ax2.axvline(1.3, color="0.7", ls=":")
        ax2.axvline(2.0, color="0.7", ls="--")
        p99s = [lat[who]["p99_ms"] for who in labels if lat[who]["n"]]
        ax2.set_xlim(0, max([2.5, *p99s]) * 1.3)
        ax2.set_xlabel("push -> start of touch (ms)")
        ax2.set_ylabel("fraction of tasks")
        ax2.set_title(f"latency at {lat['rate_per_s']:.0f} pushes/s (lines: 1.3, 2.0 ms)")
        ax2.legend(loc="lower right", fontsize=8)
    fig.suptitle(f"Goophry benchmark {doc['started']} ({doc['machine']['cores']} cores)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


#: How each process is drawn in the cost figure.
STYLE = {
    "ours": ("goophry", "tab:blue", "o"),
    "original": ("Go original", "tab:orange", "D"),
    "raw": ("raw posix_spawn loop", "0.55", "s"),
}


def plot_cost(doc: dict[str, Any], path: str) -> str:
    """Drain rate and CPU per 1000 tasks against Workers and against task types.

    Four panels, each with ours, the original (when it ran) and the raw loop, so
    that a reader sees how each grows; the raw loop runs at the same concurrency
    (Workers, or Workers times types).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scn = doc["scenarios"]
    axes_of = (
        ("Workers (one type)", scn.get("throughput", {}).get("by_workers", {})),
        (
            f"task types (Workers {scn.get('scale', {}).get('workers_per_type', '?')} each)",
            scn.get("scale", {}).get("by_types", {}),
        ),
    )
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    for (xlabel, by), (rate_ax, cpu_ax) in zip(axes_of, axes, strict=True):
        xs = sorted(int(k) for k in by)
        for who, (label, color, marker) in STYLE.items():
            rate_key = f"{who}_rate"
            cpu_key = WHO[who]
            have = [x for x in xs if rate_key in by[str(x)]]
            if not have:
                continue
            # The original crashes in some drains: say where its line skips a point.
            missing = [str(x) for x in xs if x not in have]
            if missing:
                label = f"{label} (crashed at {', '.join(missing)})"
            line = {"label": label, "color": color, "marker": marker}
            rate_ax.plot(have, [by[str(x)][rate_key] for x in have], **line)
            cpu_ax.plot(have, [by[str(x)][cpu_key] for x in have], **line)
        for ax, ylabel in ((rate_ax, "tasks/s (/bin/true)"), (cpu_ax, "CPU s per 1000 tasks")):
            if xs:
                ax.set_xscale("log", base=2)
                ax.set_xticks(xs, [str(x) for x in xs])
                ax.minorticks_off()
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            ax.set_ylim(bottom=0)
            ax.grid(True, alpha=0.3)
            if ax.lines:
                ax.legend(loc="best", fontsize=8)
        rate_ax.set_title(f"drain rate against {xlabel.split(' (')[0]}")
        cpu_ax.set_title(
            f"own CPU per 1000 tasks (scripts left out) against {xlabel.split(' (')[0]}"
        )
    ceilings = single_core_ceilings(scn).get("ours")
    ceiling = (
        f"\none daemon's single-core ceiling (1000 / its CPU s per 1000 tasks): "
        f"{min(r for _, r in ceilings):.0f}-{max(r for _, r in ceilings):.0f} tasks/s"
        if ceilings
        else ""
    )
    load = max((r["other_load_cores"] for _, r in _cases(scn)), default=float("nan"))
    fig.suptitle(
        f"Goophry benchmark {doc['started']} ({doc['machine']['cores']} cores; other work took "
        f"up to {load:.2f} of them){ceiling}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
