#!/usr/bin/env bash
# Instructions per request through each layer (callgrind, counting only
# the loop that sends the requests), the bare service's subtracted: run from the workspace root.
#
#   bash crates/tollgate-tower/benches/instructions.sh
set -euo pipefail
cd "$(dirname "$0")/../../.."
command -v valgrind >/dev/null || { echo "valgrind is missing (apt-get install valgrind)" >&2; exit 1; }
cargo bench -p tollgate-tower --bench instructions --no-run 2>/dev/null
bin=$(ls -t target/release/deps/instructions-* | grep -v '\.d$' | head -n 1)
small=20000
large=120000
count() { # stack, requests -> total instructions
    local out
    out=$(mktemp)
    valgrind --tool=callgrind --collect-atstart=no --toggle-collect='instructions::run*' \
        --callgrind-out-file="$out" "$bin" "$1" "$2" >/dev/null 2>&1
    grep -E '^(summary|totals):' "$out" | head -n 1 | awk '{print $2}'
    rm -f "$out"
}
per_request() {
    local a b
    a=$(count "$1" "$small")
    b=$(count "$1" "$large")
    echo $(((b - a) / (large - small)))
}
bare=$(per_request bare)
printf '%-32s %14s %10s\n' stack instructions overhead
printf '%-32s %14s %10s\n' bare "$bare" -
for stack in tower_governor_global tower_governor_per_ip tower_governor_per_ip_headers \
    tollgate_global tollgate_per_ip tollgate_global_headers tollgate_per_ip_headers \
    tollgate_per_ip_headers_draining; do
    n=$(per_request "$stack")
    printf '%-32s %14s %10s\n' "$stack" "$n" "$((n - bare))"
done
