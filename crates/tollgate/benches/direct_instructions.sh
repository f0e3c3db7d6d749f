#!/usr/bin/env bash
# Instructions per `check` of the direct limiter and of governor's
# (callgrind, counting only the loop of checks, so that set-up and the
# clock's calibration are not counted), the empty loop's subtracted: run
# from the workspace root.
#
#   bash crates/tollgate/benches/direct_instructions.sh
set -euo pipefail
cd "$(dirname "$0")/../../.."
. scripts/callgrind.sh
callgrind_build tollgate direct_instructions
toggle='direct_instructions::measured*'
nothing=$(per_op nothing "$toggle")
printf '%-16s %14s\n' case "instructions a check"
for case in governor_admit tollgate_admit governor_deny tollgate_deny; do
    n=$(per_op "$case" "$toggle")
    printf '%-16s %14s\n' "$case" "$(awk -v n="$n" -v z="$nothing" 'BEGIN { printf "%.1f", n - z }')"
done
