#!/usr/bin/env bash
# The seed scenario of `tollgate batch`: 100,000 requests a minute against
# `tollgate mock` on loopback, for 100,000 and 1,000,000 lines, and the same
# 100,000 lines through an asyncio pool of the official `openai` client.
# Prints the rate, the CPU time and the peak memory of each run (GNU time).
#
#   bash crates/tollgate-cli/benches/scale.sh [LINES...]   (default: 100000 1000000)
#
# Needs /usr/bin/time (Debian: apt-get install time) and, for the Python
# row, `pip install openai`. Takes about 13 minutes with the defaults.
set -euo pipefail
cd "$(dirname "$0")/../../.."
cargo build --release -p tollgate-cli
bin=$PWD/target/release/tollgate
here=$PWD/crates/tollgate-cli/benches
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
cd "$work"

"$bin" mock --rpm 100000 --tpm 100000000 --port 18400 >mock.log 2>&1 &
sleep 0.5
url=http://127.0.0.1:18400/v1/chat/completions

lines() {
    python3 -c "
import json, sys
for i in range(int(sys.argv[1])):
    print(json.dumps({'model': 'mock-1', 'max_tokens': 20,
                      'messages': [{'role': 'user', 'content': f'Count to {i}'}]}))" "$1" >"in$1.jsonl"
}

measure() { # name, command...
    local name=$1
    shift
    /usr/bin/time -f "$name: cpu %U s user + %S s system, peak %M kB, wall %e s" "$@"
}

sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(100000 1000000)
for n in "${sizes[@]}"; do
    [ -f "in$n.jsonl" ] || lines "$n"
    # The limits are learnt from the first answer's headers.
    measure "tollgate batch, $n lines" "$bin" batch --input "in$n.jsonl" --output "out$n.jsonl" \
        --url "$url" --quiet --max-in-flight 512
done

if python3 -c "import openai" 2>/dev/null; then
    [ -f in100000.jsonl ] || lines 100000
    sleep 1 # let the mock's second refill
    measure "openai asyncio pool, 100000 lines" python3 "$here/openai_pool.py" in100000.jsonl py.jsonl \
        http://127.0.0.1:18400/v1 512
else
    echo "openai is not installed (pip install openai): no Python row"
fi
