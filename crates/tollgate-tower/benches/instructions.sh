#!/usr/bin/env bash
# Instructions per request through each layer (callgrind, counting only
# the loop that sends the requests), the bare service's subtracted: run
# from the workspace root.
#
#   bash crates/tollgate-tower/benches/instructions.sh
set -euo pipefail
cd "$(dirname "$0")/../../.."
. scripts/callgrind.sh
callgrind_build tollgate-tower instructions
toggle='instructions::run*'
whole() { printf '%.0f' "$1"; }
bare=$(whole "$(per_op bare "$toggle")")
printf '%-32s %14s %10s\n' stack instructions overhead
printf '%-32s %14s %10s\n' bare "$bare" -
for stack in tower_governor_global tower_governor_per_ip tower_governor_per_ip_headers \
    tollgate_global tollgate_per_ip tollgate_global_headers tollgate_per_ip_headers \
    tollgate_per_ip_headers_draining; do
    n=$(whole "$(per_op "$stack" "$toggle")")
    printf '%-32s %14s %10s\n' "$stack" "$n" "$((n - bare))"
done
