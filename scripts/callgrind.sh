# Instructions per operation of a bench binary, counted by callgrind:
# sourced by the benches' instruction scripts, from the workspace root.
#
#   callgrind_build PACKAGE BENCH   builds the bench; sets BENCH_BIN
#   per_op CASE TOGGLE              instructions per operation of CASE
#                                   (one decimal), counting only the
#                                   functions matching TOGGLE
#
# The binary runs as `BIN CASE N`; `per_op` runs it for two values of N
# and divides the difference, so what runs once (set-up) cancels out.
command -v valgrind >/dev/null || { echo "valgrind is missing (apt-get install valgrind)" >&2; exit 1; }

CALLGRIND_SMALL=20000
CALLGRIND_LARGE=120000

callgrind_build() { # package, bench
    cargo bench -p "$1" --bench "$2" --no-run 2>/dev/null
    BENCH_BIN=$(ls -t target/release/deps/"$2"-* | grep -v '\.d$' | head -n 1)
}

callgrind_count() { # case, n, toggle -> total instructions
    local out
    out=$(mktemp)
    valgrind --tool=callgrind --collect-atstart=no --toggle-collect="$3" \
        --callgrind-out-file="$out" "$BENCH_BIN" "$1" "$2" >/dev/null 2>&1
    grep -E '^(summary|totals):' "$out" | head -n 1 | awk '{print $2}'
    rm -f "$out"
}

per_op() { # case, toggle
    local a b
    a=$(callgrind_count "$1" "$CALLGRIND_SMALL" "$2")
    b=$(callgrind_count "$1" "$CALLGRIND_LARGE" "$2")
    awk -v a="$a" -v b="$b" -v n=$((CALLGRIND_LARGE - CALLGRIND_SMALL)) \
        'BEGIN { printf "%.1f", (b - a) / n }'
}
