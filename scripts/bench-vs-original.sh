#!/usr/bin/env bash
# Side by side with the original Composable Rust (jonathanbelolo/composable-rust), issue 17 item 1.
#
#   scripts/bench-vs-original.sh ORIGINAL_DIR [ROUNDS]
#
# ORIGINAL_DIR is a checkout of the original (a git work tree, or `git archive HEAD | tar -x` with the
# commit written to ORIGINAL_DIR/.anchor-commit, so the table can name it). It is
# not modified: its workloads (bench/anchor/original/benches/anchor.rs, copied from its
# runtime/benches/phase1_benchmarks.rs, plus the fan-out of our runtime/benches/in_memory_bus.rs)
# are built as a separate package with path dependencies on its core, runtime and testing crates.
# Ours are runtime/benches/anchor.rs, the same workloads ported line for line, same benchmark ids.
#
# Builds both (release-like bench profile on both sides), then runs ROUNDS rounds (default 3),
# alternating ours, original, ours, original..., and prints one table: per workload the median of
# the per-round criterion medians (min-max across rounds in brackets), speed-up = original / ours,
# and ours' Store::send / bare reducer call. Needs cargo and python3; network only for the
# registry (CI has none beyond it, so CI does not run this).
#
# Environment:
#   ANCHOR_WORK_DIR         where the original's harness, its target dir and the results go
#                           (default: <repo>/target/anchor-vs-original)
#   ANCHOR_OURS_TARGET_DIR  our target dir (default: $CARGO_TARGET_DIR or <repo>/target)
set -euo pipefail

if [[ $# -lt 1 || $# -gt 2 ]]; then
    echo "usage: $0 ORIGINAL_DIR [ROUNDS]" >&2
    exit 2
fi
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
orig="$(cd "$1" && pwd)"
rounds="${2:-3}"
for crate in core runtime testing; do
    [[ -f "$orig/$crate/Cargo.toml" ]] || { echo "$orig/$crate/Cargo.toml missing: not a checkout of the original" >&2; exit 2; }
done
work="${ANCHOR_WORK_DIR:-$repo/target/anchor-vs-original}"
ours_target="${ANCHOR_OURS_TARGET_DIR:-${CARGO_TARGET_DIR:-$repo/target}}"
orig_target="$work/target"
harness="$work/harness"
results="$work/results"

# A work tree of the original has .git; an exported tree can carry its commit in .anchor-commit.
if [[ -e "$orig/.git" ]]; then
    orig_commit="$(git -C "$orig" rev-parse HEAD)"
elif [[ -f "$orig/.anchor-commit" ]]; then
    orig_commit="$(cat "$orig/.anchor-commit")"
else
    orig_commit=unknown
fi
ours_commit="$(git -C "$repo" rev-parse HEAD 2>/dev/null || echo unknown)"
if [[ -n "$(git -C "$repo" status --porcelain 2>/dev/null)" ]]; then ours_commit="$ours_commit (+ uncommitted changes)"; fi

# The original's harness: a package of its own, outside both trees.
# Its Cargo.lock is kept between invocations (resolved on the first one).
rm -rf "$results" "$harness/benches" "$harness/src"
mkdir -p "$harness" "$results"
cp -r "$repo/bench/anchor/original/benches" "$repo/bench/anchor/original/src" "$harness/"
sed "s#@ORIGINAL_DIR@#$orig#g" "$repo/bench/anchor/original/Cargo.toml.in" > "$harness/Cargo.toml.new"
if cmp -s "$harness/Cargo.toml.new" "$harness/Cargo.toml"; then rm "$harness/Cargo.toml.new"; else mv "$harness/Cargo.toml.new" "$harness/Cargo.toml"; fi

export CARGO_INCREMENTAL=0
echo "== building ours ($ours_target)" >&2
(cd "$repo" && CARGO_TARGET_DIR="$ours_target" cargo bench -p composable-rust-runtime --bench anchor --no-run)
echo "== building the original ($orig_target)" >&2
(cd "$harness" && CARGO_TARGET_DIR="$orig_target" cargo bench --bench anchor --no-run)

run_side() { # side round
    local side="$1" round="$2" dir target
    if [[ "$side" == ours ]]; then
        dir="$repo" target="$ours_target"
        (cd "$dir" && CARGO_TARGET_DIR="$target" cargo bench -q -p composable-rust-runtime --bench anchor -- --noplot anchor/) >&2
    else
        dir="$harness" target="$orig_target"
        (cd "$dir" && CARGO_TARGET_DIR="$target" cargo bench -q --bench anchor -- --noplot anchor/) >&2
    fi
    local out="$results/$side/$round"
    mkdir -p "$out"
    (cd "$target/criterion/anchor" && find . -path '*/new/estimates.json' | while read -r f; do
        id="${f#./}"; id="${id%/new/estimates.json}"
        mkdir -p "$out/$(dirname "$id")"; cp "$f" "$out/$id.json"
    done)
}

for ((r = 1; r <= rounds; r++)); do
    echo "== round $r/$rounds: ours" >&2
    run_side ours "$r"
    echo "== round $r/$rounds: original" >&2
    run_side original "$r"
done

python3 - "$results" "$rounds" "$orig_commit" "$ours_commit" <<'PY'
import json, os, statistics, sys

results, rounds, orig_commit, ours_commit = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]

def medians(side, bench):
    out = []
    for r in range(1, rounds + 1):
        p = os.path.join(results, side, str(r), bench + ".json")
        if os.path.exists(p):
            with open(p) as f:
                out.append(json.load(f)["median"]["point_estimate"])
    return out

def fmt(ns):
    if ns < 1e3: return f"{ns:.1f} ns"
    if ns < 1e6: return f"{ns / 1e3:.2f} us"
    return f"{ns / 1e6:.2f} ms"

def cell(v):
    if not v: return "n/a"
    m = statistics.median(v)
    return f"{fmt(m)} [{fmt(min(v))}-{fmt(max(v))}]" if len(v) > 1 else fmt(m)

rows = [
    ("bare reducer call", "reducer_call"),
    ("Store::send, no effect ([Effect::None])", "store_send"),
    ("effect round trip (Future/Run, awaited)", "effect_round_trip"),
    ("fan-out 256 events -> 1 subscriber", "fan_out_256/1"),
    ("fan-out 256 events -> 1,000 subscribers", "fan_out_256/1000"),
]
print(f"original commit: {orig_commit}")
print(f"ours commit:     {ours_commit}")
print(f"{rounds} round(s) per side, alternating ours/original; each value is criterion's median of 100 samples per round;")
print("shown: median of the per-round medians [min-max across rounds]\n")
print("| workload | original | ours | speed-up (original / ours) |")
print("|---|---|---|---|")
ok = True
for label, bench in rows:
    o, u = medians("original", bench), medians("ours", bench)
    if o and u:
        s = statistics.median(o) / statistics.median(u)
        ok &= s >= 5.0
        sp = f"{s:.2f}x"
    else:
        ok, sp = False, "n/a"
    print(f"| {label} | {cell(o)} | {cell(u)} | {sp} |")
extra = [("bare reducer call, reducer returns []", "reducer_call_empty"), ("Store::send, reducer returns []", "store_send_empty")]
for label, bench in extra:
    print(f"| {label} (ours only) | - | {cell(medians('ours', bench))} | - |")
print()
for label, send, call in [("[Effect::None]", "store_send", "reducer_call"), ("[]", "store_send_empty", "reducer_call_empty")]:
    s, c = medians("ours", send), medians("ours", call)
    if s and c:
        ratio = statistics.median(s) / statistics.median(c)
        print(f"ours, Store::send / bare reducer call, reducer returns {label}: {ratio:.2f}x (goal: within 3x)")
print(f"\ngoal 'ours at least 5x faster on every line': {'met' if ok else 'NOT met'}")
PY
