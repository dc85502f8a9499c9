#!/usr/bin/env python3
"""Turns one `scripts/bench-all.sh` run into tables and SVG charts.

    bench-report.py criterion CRITERION_DIR GROUP...   criterion's latest estimates as JSON lines
    bench-report.py report OUT_DIR --charts DIR [--readme README.md]

`report` reads OUT_DIR/results-<round>.jsonl (and OUT_DIR/anchor/results when the run compared with
the original), takes per line the median across rounds with the min-max spread, checks each against
the goal of the performance issue, writes ours-vs-raw.svg, saga-vs-floor.svg and (with the anchor)
vs-original.svg into the charts directory, and replaces the README's text between
`<!-- bench-all:begin -->` and `<!-- bench-all:end -->` with the tables. Standard library only, so
that it runs wherever the benchmarks do.
"""

import glob
import json
import os
import re
import statistics
import sys
from html import escape

# Write transactions per checkout order before this round (issue 17): the floor's divisor.
TX_PER_ORDER = 12.12


def criterion(directory, groups):
    for group in groups:
        for meta in sorted(glob.glob(os.path.join(directory, group, "**", "new", "benchmark.json"), recursive=True)):
            with open(meta) as f:
                m = json.load(f)
            with open(os.path.join(os.path.dirname(meta), "estimates.json")) as f:
                ns = json.load(f)["median"]["point_estimate"]
            elements = (m.get("throughput") or {}).get("Elements")
            print(json.dumps({"bench": group, "id": m["function_id"], "param": m.get("value_str"), "ns": ns, "elements": elements}))


def load_rounds(out):
    rounds = []
    for path in sorted(glob.glob(os.path.join(out, "results-*.jsonl")), key=lambda p: int(re.findall(r"(\d+)\.jsonl$", p)[0])):
        with open(path) as f:
            rounds.append([json.loads(line) for line in f if line.strip()])
    return rounds


def spread(values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    return statistics.median(values), min(values), max(values)


class Line:
    """One compared line: ours and the reference per round, the ratio and its goal."""

    def __init__(self, group, label, ours, raw, unit, goal=None, higher_is_better=True, ratio_name="ours / raw"):
        self.group, self.label, self.unit, self.goal = group, label, unit, goal
        self.higher_is_better, self.ratio_name = higher_is_better, ratio_name
        self.ours, self.raw = spread(ours), spread(raw)
        ratios = [o / r for o, r in zip(ours, raw) if o is not None and r]
        self.ratio = spread(ratios)

    def met(self):
        if self.goal is None or self.ratio is None:
            return None
        return self.ratio[0] >= self.goal if self.higher_is_better else self.ratio[0] <= self.goal


def fmt(value, unit):
    if value is None:
        return "-"
    if unit == "ns":
        if value >= 1e6:
            return f"{value / 1e6:.2f} ms"
        return f"{value / 1000:.2f} µs" if value >= 1000 else f"{value:.1f} ns"
    if unit in ("ms", "us", "µs"):
        return f"{value:,.0f} {unit}" if value >= 100 else f"{value:.2f} {unit}"
    if value >= 1e6:
        return f"{value / 1e6:.2f} M {unit}"
    if value >= 1e4:
        return f"{value / 1e3:.1f} K {unit}"
    return (f"{value:,.0f} {unit}" if value >= 100 else f"{value:.2f} {unit}").rstrip()


def bare(value, unit):
    """`fmt` without the unit, for the spread beside a figure that shows it."""
    text = fmt(value, unit)
    return text[: -len(unit)].rstrip() if unit and text.endswith(unit) else text


def cell(s, unit):
    if s is None:
        return "-"
    median, lo, hi = s
    return f"{fmt(median, unit)} ({bare(lo, unit)} - {bare(hi, unit)})" if lo != hi else fmt(median, unit)


def ratio_cell(s):
    if s is None:
        return "-"
    median, lo, hi = s
    return f"**{median:.2f}** ({lo:.2f}-{hi:.2f})" if lo != hi else f"**{median:.2f}**"


def per_round(rounds, pick):
    return [pick(r) for r in rounds]


def find(rows, **kv):
    for row in rows:
        if all(row.get(k) == v for k, v in kv.items()):
            return row
    return None


def rate(row):
    if not row or not row.get("elements"):
        return None
    return row["elements"] / row["ns"] * 1e9


def lines_from(rounds):
    lines = []
    for subs in ("1", "1000", "10000"):
        ours = per_round(rounds, lambda r: rate(find(r, bench="in_memory_bus_delivery", id="composable_rust_bus", param=subs)))
        raw = per_round(rounds, lambda r: rate(find(r, bench="in_memory_bus_delivery", id="raw_broadcast_clone_event", param=subs)))
        lines.append(Line("in-memory bus", f"{int(subs):,} subscriber{'s' if subs != '1' else ''}", ours, raw, "deliveries/s", 0.95))
    for label, bench_id, param in (("publish, 1 task", "nats_publish_acked", "1"), ("publish, 16 tasks", "nats_publish_acked", "16"), ("consume + ack", "nats_consume_acked", None)):
        ours = per_round(rounds, lambda r: rate(find(r, bench=bench_id, id="composable_rust_bus", param=param)))
        raw = per_round(rounds, lambda r: rate(find(r, bench=bench_id, id="raw_async_nats", param=param)))
        lines.append(Line("NATS JetStream", label, ours, raw, "events/s", 0.95))
    for bench, group, goals in (
        ("kafka_bus", "Kafka (tansu)", {"publish": 0.95, "consume + ack": 0.95}),
        ("zenoh_bus", "Zenoh", {"publish + subscribe": 0.9}),
        ("postgres_append", "PostgreSQL appends vs pgbench", {"1 writer": 0.8, "32 writers": 1.0, "32 writers, group commit off": None}),
        ("sqlite_append", "SQLite appends vs raw sqlx", {"1 writers": None, "32 writers": 0.8}),
        ("sqlite_append_before_group_commit", "SQLite group commit vs before", {"32 writers": 5.0}),
    ):
        for case, goal in goals.items():
            rows = per_round(rounds, lambda r: find(r, bench=bench, case=case))
            ours = [row and row["ours"] for row in rows]
            raw = [row and row["raw"] for row in rows]
            ratio_name = "group commit / before" if "before" in bench else "ours / raw"
            lines.append(Line(group, case.replace("1 writers", "1 writer"), ours, raw, rows[0]["unit"] if rows and rows[0] else "", goal, ratio_name=ratio_name))
    return [line for line in lines if line.ours is not None]


def store_send_lines(rounds):
    def ns(r, name):
        row = find(r, bench="store_send", id=name)
        return row and row["ns"]

    reducer = per_round(rounds, lambda r: ns(r, "reducer_call_only"))
    out = []
    for name, label in (
        ("no_effects", "`Store::send`, action with no effects"),
        ("effect_none_send_and_finish", "`Store::send` + `finish()`, reducer returns `[Effect::None]`"),
        ("append_then_publish_awaited", "`Store::send` + `finish()`, one append published through the outbox"),
    ):
        values = per_round(rounds, lambda r: ns(r, name))
        out.append(Line("Store::send", label, values, reducer, "ns", 3.0 if name == "no_effects" else None, higher_is_better=False, ratio_name="send / reducer call"))
    return reducer, [line for line in out if line.ours is not None]


def saga_lines(rounds):
    floors = {"sqlite": "sqlite, 16 connections", "postgres": "postgres, 16 clients"}
    cases = []
    for row in rounds[0] if rounds else []:
        if row.get("bench") == "saga" and row["case"] not in cases:
            cases.append(row["case"])
    out = []
    for case in cases:
        rows = per_round(rounds, lambda r: find(r, bench="saga", case=case))
        floor_case = floors.get(case.split(" ")[0])
        floor = per_round(rounds, lambda r: (lambda f: f and f["raw"] / TX_PER_ORDER)(find(r, bench="floor", case=floor_case))) if floor_case else [None] * len(rows)
        out.append({
            "case": case,
            "orders": rows[0]["orders"] if rows[0] else None,
            "ok": all(row and row.get("ok") for row in rows),
            "rate": spread([row and row.get("orders_per_sec") for row in rows]),
            "p50": spread([row and row.get("p50_ms") for row in rows]),
            "p99": spread([row and row.get("p99_ms") for row in rows]),
            "p99_p50": spread([row and row.get("p99_ms") and row["p99_ms"] / row["p50_ms"] for row in rows]),
            "floor": spread(floor),
            "of_floor": spread([row and f and row.get("orders_per_sec") / f for row, f in zip(rows, floor)]),
            "wal": spread([row and row.get("wal_syncs_per_order") for row in rows]),
            "rss": spread([row and row.get("peak_rss_kib") for row in rows]),
        })
    return out


def anchor_lines(out):
    results = os.path.join(out, "anchor", "results")
    if not os.path.isdir(results):
        return []

    def medians(side, bench):
        values = []
        for path in glob.glob(os.path.join(results, side, "*", bench + ".json")):
            with open(path) as f:
                values.append(json.load(f)["median"]["point_estimate"])
        return values

    lines = []
    for bench, label in (
        ("reducer_call", "bare reducer call"),
        ("store_send", "`Store::send`, no effect (`[Effect::None]`)"),
        ("effect_round_trip", "effect round trip (Future / Run, awaited)"),
        ("fan_out_256/1", "fan-out 256 events to 1 subscriber"),
        ("fan_out_256/1000", "fan-out 256 events to 1,000 subscribers"),
    ):
        ours, original = medians("ours", bench), medians("original", bench)
        if ours and original:
            n = min(len(ours), len(original))
            # Speed-up = original time / our time, per round.
            lines.append(Line("vs the original", label, original[:n], ours[:n], "ns", 5.0, ratio_name="speed-up"))
            lines[-1].ours, lines[-1].raw = spread(ours), spread(original)
    return lines


def anchor_send_ratio(out):
    results = os.path.join(out, "anchor", "results", "ours")
    ratios = []
    for round_dir in sorted(glob.glob(os.path.join(results, "*"))):
        try:
            with open(os.path.join(round_dir, "store_send.json")) as f:
                send = json.load(f)["median"]["point_estimate"]
            with open(os.path.join(round_dir, "reducer_call.json")) as f:
                reducer = json.load(f)["median"]["point_estimate"]
        except OSError:
            continue
        ratios.append(send / reducer)
    return spread(ratios)


# ---------- SVG ----------

def hbar_svg(title, subtitle, rows, path, axis_label, goal_label="goal"):
    """rows: (group, label, value, lo, hi, goal, met). A bar per row, whiskers for the spread."""
    width, left, right, bar, gap, top = 900, 330, 90, 16, 8, 64
    xmax = max([max(r[4] or 0, r[2] or 0, r[5] or 0) for r in rows] + [1e-9]) * 1.1
    y = top
    parts = []
    current = None
    for group, label, value, lo, hi, goal, met in rows:
        if group != current:
            current = group
            y += 6
            parts.append(f'<text x="10" y="{y + 12}" font-weight="bold">{escape(group)}</text>')
            y += 20
        scale = (width - left - right) / xmax
        color = "#2e7d32" if met else ("#c62828" if met is False else "#546e7a")
        parts.append(f'<text x="{left - 8}" y="{y + bar - 4}" text-anchor="end">{escape(label)}</text>')
        parts.append(f'<rect x="{left}" y="{y}" width="{max(value * scale, 1):.1f}" height="{bar}" fill="{color}" opacity="0.85"/>')
        if lo is not None and hi is not None and hi > lo:
            parts.append(f'<line x1="{left + lo * scale:.1f}" x2="{left + hi * scale:.1f}" y1="{y + bar / 2}" y2="{y + bar / 2}" stroke="#000" stroke-width="1.5"/>')
        if goal is not None:
            gx = left + goal * scale
            parts.append(f'<line x1="{gx:.1f}" x2="{gx:.1f}" y1="{y - 2}" y2="{y + bar + 2}" stroke="#f9a825" stroke-width="3"/>')
        parts.append(f'<text x="{left + max(value, hi or 0) * scale + 6:.1f}" y="{y + bar - 4}">{value:.2f}</text>')
        y += bar + gap
    height = y + 50
    head = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="13">',
        f'<rect width="{width}" height="{height}" fill="#fff"/>',
        f'<text x="10" y="22" font-size="16" font-weight="bold">{escape(title)}</text>',
        f'<text x="10" y="42" fill="#555">{escape(subtitle)}</text>',
        f'<text x="10" y="{height - 30}" fill="#555">{escape(axis_label)}</text>',
        f'<text x="10" y="{height - 12}" fill="#555">black: min-max over the rounds; yellow tick: {escape(goal_label)}; green: goal met, red: not met, grey: no goal</text>',
    ]
    with open(path, "w") as f:
        f.write("\n".join(head + parts + ["</svg>"]) + "\n")


def report(out, charts, readme):
    rounds = load_rounds(out)
    if not rounds:
        sys.exit(f"no results-*.jsonl in {out}")
    with open(os.path.join(out, "run.txt")) as f:
        run = dict(line.strip().split(": ", 1) for line in f if ": " in line)
    compared = lines_from(rounds)
    reducer, sends = store_send_lines(rounds)
    sagas = saga_lines(rounds)
    anchors = anchor_lines(out)
    n = len(rounds)
    stamp = f"{run.get('date', '?')[:10]}, commit {run.get('commit', '?')}, {run.get('machine', '?')}, {n} round(s)"
    os.makedirs(charts, exist_ok=True)

    hbar_svg(
        "composable-rust against the raw client, same run",
        stamp,
        [(l.group, l.label, l.ratio[0], l.ratio[1], l.ratio[2], l.goal, l.met()) for l in compared if l.ratio and l.ratio_name == "ours / raw"],
        os.path.join(charts, "ours-vs-raw.svg"),
        "ratio of rates, ours / raw (1.0 = as fast as the raw client)",
    )
    saga_rows = []
    for s in sagas:
        if s["of_floor"]:
            saga_rows.append(("checkout saga / floor", s["case"], *s["of_floor"], 0.5, s["of_floor"][0] >= 0.5))
    if saga_rows:
        hbar_svg(
            "checkout saga end to end against its floor",
            stamp + f"; floor = raw single-row insert tx/s at 16 clients / {TX_PER_ORDER} tx per order",
            saga_rows,
            os.path.join(charts, "saga-vs-floor.svg"),
            "orders/s as a fraction of the floor",
        )
    if anchors:
        hbar_svg(
            "against the original Composable Rust (jonathanbelolo/composable-rust)",
            stamp,
            [(l.group, l.label, l.ratio[0], l.ratio[1], l.ratio[2], l.goal, l.met()) for l in anchors],
            os.path.join(charts, "vs-original.svg"),
            "speed-up (original time / our time)",
        )

    md = [f"Generated by `scripts/bench-all.sh` on {stamp} (rustc: {run.get('rustc', '?')}; PostgreSQL {run.get('postgres', '?')}). "
          "Each figure is the median over the rounds, the min-max spread in brackets; ratios are taken per round. "
          "The machine is the project's shared 2-core VM: absolute rates move from run to run, the ratios less.", ""]
    md += [f"![ours against the raw clients](docs/bench/ours-vs-raw.svg)", ""]
    if saga_rows:
        md += ["![checkout saga against its floor](docs/bench/saga-vs-floor.svg)", ""]
    if anchors:
        md += ["![against the original](docs/bench/vs-original.svg)", ""]
    md += ["| backend | line | composable-rust | raw / reference | ratio | goal |", "|---|---|---|---|---|---|"]
    for l in compared:
        goal = "-" if l.goal is None else f"{'≥' if l.higher_is_better else '≤'} {l.goal} {'(met)' if l.met() else '(**not met**)'}"
        md.append(f"| {l.group} | {l.label} | {cell(l.ours, l.unit)} | {cell(l.raw, l.unit)} | {ratio_cell(l.ratio)} {'' if l.ratio_name == 'ours / raw' else '(' + l.ratio_name + ')'} | {goal} |")
    md += ["", "| `Store::send` | time | / bare reducer call (" + cell(spread(reducer), "ns") + ") | goal |", "|---|---|---|---|"]
    for l in sends:
        goal = "-" if l.goal is None else f"≤ {l.goal} {'(met)' if l.met() else '(**not met**)'}"
        md.append(f"| {l.label} | {cell(l.ours, 'ns')} | {ratio_cell(l.ratio)} | {goal} |")
    if sagas:
        md += ["", f"Checkout saga end to end (`checkout-saga --json`, release build, orders placed 16 at a time, 2 saga workers). "
               f"Floor: the store's raw single-row insert transactions per second at 16 clients (pgbench `-M prepared` for PostgreSQL, "
               f"16 sqlx connections for SQLite, same run) divided by the {TX_PER_ORDER} write transactions an order took before this round; "
               "goal at least 0.5 of it, and p99 within 3x p50.", "",
               "| store + bus | orders | orders/s | p50 | p99 | p99 / p50 | floor orders/s | of floor | WAL fsyncs per order | peak RSS | all checks |",
               "|---|---|---|---|---|---|---|---|---|---|---|"]
        for s in sagas:
            of = "-" if not s["of_floor"] else ratio_cell(s["of_floor"]) + (" (met)" if s["of_floor"][0] >= 0.5 else " (**not met**)")
            p = "-" if not s["p99_p50"] else f"{s['p99_p50'][0]:.2f}" + (" (met)" if s["p99_p50"][0] <= 3 else " (**not met**)")
            rss = "-" if not s["rss"] else f"{s['rss'][0] / 1024:.0f} MiB"
            md.append(f"| {s['case']} | {s['orders']:,} | {cell(s['rate'], 'orders/s')} | {cell(s['p50'], 'ms')} | {cell(s['p99'], 'ms')} | {p} | "
                      f"{cell(s['floor'], 'orders/s')} | {of} | {cell(s['wal'], '')} | {rss} | {'passed' if s['ok'] else '**failed**'} |")
    if anchors:
        md += ["", "Against the original Composable Rust (`scripts/bench-vs-original.sh`, same run, rounds alternating ours and the original; "
               "time per operation, criterion's median per round):", "",
               "| workload | original | ours | speed-up | goal |", "|---|---|---|---|---|"]
        for l in anchors:
            md.append(f"| {l.label} | {cell(l.raw, 'ns')} | {cell(l.ours, 'ns')} | {ratio_cell(l.ratio)} | ≥ 5 {'(met)' if l.met() else '(**not met**)'} |")
        send_ratio = anchor_send_ratio(out)
        if send_ratio:
            md += ["", f"Ours, `Store::send` / bare reducer call on that workload: {ratio_cell(send_ratio)} "
                   f"(goal ≤ 3: {'met' if send_ratio[0] <= 3 else '**not met**'})."]
    text = "\n".join(md) + "\n"
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(text)
    print(text)
    if readme:
        with open(readme) as f:
            body = f.read()
        begin, end = "<!-- bench-all:begin -->", "<!-- bench-all:end -->"
        if begin not in body or end not in body:
            sys.exit(f"{readme} has no {begin} ... {end} section")
        head, rest = body.split(begin, 1)
        _, tail = rest.split(end, 1)
        with open(readme, "w") as f:
            f.write(head + begin + "\n" + text + end + tail)


def main(argv):
    if len(argv) >= 3 and argv[1] == "criterion":
        criterion(argv[2], argv[3:])
    elif len(argv) >= 3 and argv[1] == "report":
        args = argv[3:]
        charts = args[args.index("--charts") + 1] if "--charts" in args else "docs/bench"
        readme = args[args.index("--readme") + 1] if "--readme" in args else None
        report(argv[2], charts, readme)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
