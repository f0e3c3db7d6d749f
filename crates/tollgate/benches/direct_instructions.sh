#!/usr/bin/env bash
# Instructions per `check` of the direct limiter and of governor's
# (callgrind, counting only the loop of checks, so that set-up and the
# clock's calibration are not counted), the empty loop's subtracted: run
# from the workspace root.
#
#   bash crates/tollgate/benches/direct_instructions.sh
set -euo pipefail
cd "$(dirname "$0")/../../.."
command -v valgrind >/dev/null || { echo "valgrind is missing (apt-get install valgrind)" >&2; exit 1; }
cargo bench -p tollgate --bench direct_instructions --no-run 2>/dev/null
bin=$(ls -t target/release/deps/direct_instructions-* | grep -v '\.d$' | head -n 1)
small=20000
large=120000
count() { # case, checks -> total instructions
    local out
    out=$(mktemp)
    valgrind --tool=callgrind --collect-atstart=no --toggle-collect='direct_instructions::measured*' \
        --callgrind-out-file="$out" "$bin" "$1" "$2" >/dev/null 2>&1
    grep -E '^(summary|totals):' "$out" | head -n 1 | awk '{print $2}'
    rm -f "$out"
}
per_check() {
    local a b
    a=$(count "$1" "$small")
    b=$(count "$1" "$large")
    awk -v a="$a" -v b="$b" -v n=$((large - small)) 'BEGIN { printf "%.1f", (b - a) / n }'
}
nothing=$(per_check nothing)
printf '%-16s %14s\n' case "instructions a check"
for case in governor_admit tollgate_admit governor_deny tollgate_deny; do
    n=$(per_check "$case")
    printf '%-16s %14s\n' "$case" "$(awk -v n="$n" -v z="$nothing" 'BEGIN { printf "%.1f", n - z }')"
done
