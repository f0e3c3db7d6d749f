#!/usr/bin/env bash
# `tollgate batch --redis` through faults of Redis, against `tollgate mock`
# (1,200 requests a minute, its limits in memory) on loopback: 400 lines,
# Redis killed at 3 s and restarted empty 5 s later, paused for 1.5 s
# (`CLIENT PAUSE`), killed for good, and no fault. Prints, per run, the
# lines answered and failed, the attempts refused and the exit code.
#
#   bash crates/tollgate-cli/benches/redis_faults.sh [RUNS] [STYLES]
#
# RUNS defaults to 3; STYLES (the mock's header dialects, `openai`,
# `anthropic`, `ietf`, `bare`) to `openai`. Needs redis-server and
# redis-cli. Takes about 80 s a run of the four faults, per style.
set -euo pipefail
cd "$(dirname "$0")/../../.."
cargo build --release -p tollgate-cli 2>/dev/null
bin=$PWD/target/release/tollgate
runs=${1:-3}
styles=${2:-openai}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
cd "$work"
rport=18499
mport=18731
python3 -c "
import json
for i in range(400):
    print(json.dumps({'model': 'm', 'max_tokens': 16,
                      'messages': [{'role': 'user', 'content': f'line {i}'}]}))" >in.jsonl

one() { # fault, style
    redis-server --port $rport --bind 127.0.0.1 --save '' --appendonly no >/dev/null 2>&1 &
    local redis=$!
    sleep 0.5
    "$bin" mock --rpm 1200 --tpm 10000000 --port $mport --latency-ms 50..150 --style "$2" >mock.log 2>&1 &
    local mock=$!
    sleep 0.5
    rm -f out.jsonl
    "$bin" batch --quiet --url http://127.0.0.1:$mport/v1/chat/completions \
        --input in.jsonl --output out.jsonl --redis redis://127.0.0.1:$rport/ >batch.log 2>&1 &
    local batch=$!
    sleep 3
    case $1 in
        kill) kill -9 $redis; wait $redis 2>/dev/null || true; sleep 5
              redis-server --port $rport --bind 127.0.0.1 --save '' --appendonly no >/dev/null 2>&1 &
              redis=$! ;;
        dead) kill -9 $redis; wait $redis 2>/dev/null || true ;;
        pause) redis-cli -p $rport CLIENT PAUSE 1500 ALL >/dev/null ;;
    esac
    local code=0
    wait $batch || code=$?
    local ok failed refused
    ok=$(sed -n 's/.* ok: \([0-9]*\),.*/\1/p' batch.log)
    failed=$(sed -n 's/.* failed: \([0-9]*\) .*/\1/p' batch.log)
    refused=$(sed -n 's/^refused (429\/503\/529): \([0-9]*\),.*/\1/p' batch.log)
    printf '| %s | %s | %s | %s | %s of %s | %s |\n' "$2" "$1" "$ok" "$failed" "$refused" \
        "$((ok + failed + refused))" "$code"
    kill $mock $redis 2>/dev/null || true
    wait 2>/dev/null || true
}

echo "| headers | fault | answered | failed | attempts refused | exit |"
echo "|---|---|---:|---:|---:|---:|"
for style in $styles; do
    for _ in $(seq "$runs"); do
        for fault in kill pause dead none; do one $fault "$style"; done
    done
done
