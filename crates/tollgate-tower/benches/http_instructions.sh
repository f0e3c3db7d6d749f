#!/usr/bin/env bash
# Instructions per request of each app's server in the HTTP bench
# (`http_paired`), counted by callgrind, one thread a server: what the
# server does for a request, without the client's share and without the
# machine's noise. Run from the workspace root:
#
#   bash crates/tollgate-tower/benches/http_instructions.sh [lean]
#
# Each server runs on a runtime thread of its own, started in the order
# the bench lists the apps (callgrind numbers the threads in that order,
# the client being thread 1). The bench runs twice, for 2 and 6 rounds of
# 1,600 requests an app; the difference, over 4 x 1,600 requests, leaves
# out what runs once (start-up, connecting, warming).
set -euo pipefail
cd "$(dirname "$0")/../../.."
. scripts/callgrind.sh
callgrind_build tollgate-tower http_paired
bin=$BENCH_BIN
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for rounds in 2 6; do
    valgrind --tool=callgrind --separate-threads=yes \
        --callgrind-out-file="$out/r$rounds" "$bin" "$rounds" "$@" >"$out/table$rounds" 2>/dev/null
done
# The apps in the bench's order, from the table it printed.
mapfile -t apps < <(awk '/median/ {print $1}' "$out/table6")
printf '%-34s %14s %10s\n' app instructions overhead
bare=""
for i in "${!apps[@]}"; do
    thread=$(printf '%02d' $((i + 2)))
    a=$(grep '^summary:' "$out/r2-$thread" | awk '{print $2}')
    b=$(grep '^summary:' "$out/r6-$thread" | awk '{print $2}')
    n=$(( (b - a) / (4 * 1600) ))
    if [ -z "$bare" ]; then
        bare=$n
        printf '%-34s %14s %10s\n' "${apps[$i]}" "$n" -
    else
        printf '%-34s %14s %10s\n' "${apps[$i]}" "$n" "$((n - bare))"
    fi
done
