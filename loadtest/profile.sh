#!/usr/bin/env bash
# Where tether's CPU goes under load: runs one loadtest subcommand, and once its tether phase is under way
# samples the hub and the client with `perf record` and prints, for each, the kernel/user split, the hottest
# symbols, and the share of time under a few call paths that the README's Performance section discusses.
#
#   bash loadtest/profile.sh proxy --concurrency 64 --duration 20s [--hub-arg=--worker-threads=1]
#   bash loadtest/profile.sh bulk --size 8GiB --repeat 1
#
# Needs `perf` (Debian: linux-perf) and root or kernel.perf_event_paranoid <= 1. Keeps the recordings in
# $PROFILE_DIR (default: a new directory under /tmp), to be read again with `perf report -i`.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WHAT=${1:?usage: profile.sh proxy|bulk [loadtest arguments...]}
shift
case $WHAT in proxy|bulk) ;; *) echo "profile.sh: first argument must be proxy or bulk" >&2; exit 2 ;; esac
command -v perf >/dev/null || { echo "profile.sh: perf is not installed (apt-get install linux-perf)" >&2; exit 2; }
SECONDS_SAMPLED=${PROFILE_SECONDS:-4}
OUT=${PROFILE_DIR:-$(mktemp -d /tmp/tether-profile-XXXXXX)}
mkdir -p "$OUT"

cargo build --release --quiet -p loadtest
"$ROOT/target/release/loadtest" "$WHAT" "$@" >"$OUT/report.txt" 2>"$OUT/progress.txt" &
LOADTEST=$!
trap 'kill $LOADTEST 2>/dev/null || true; wait 2>/dev/null || true' EXIT

# The direct path runs first; the progress line names tether once its phase is under way.
deadline=$((SECONDS + 600))
until grep -q "tether" "$OUT/progress.txt" 2>/dev/null; do
  kill -0 $LOADTEST 2>/dev/null || { echo "profile.sh: loadtest ended before its tether phase" >&2; cat "$OUT/progress.txt" >&2; exit 1; }
  [ $SECONDS -lt $deadline ] || { echo "profile.sh: no tether phase within 600 s" >&2; exit 1; }
  sleep 0.2
done
role_pid() { pgrep -P $LOADTEST -f "loadtest role $1" | head -1; }
HUB=$(role_pid hub)
SPOKE=$(role_pid spoke)
[ -n "$HUB" ] && [ -n "$SPOKE" ] || { echo "profile.sh: hub or client process not found" >&2; exit 1; }
perf record -q -F 1000 -g -p "$HUB" -o "$OUT/hub.data" -- sleep "$SECONDS_SAMPLED" &
perf record -q -F 1000 -g -p "$SPOKE" -o "$OUT/client.data" -- sleep "$SECONDS_SAMPLED"
wait %2 2>/dev/null || true

for role in hub client; do
  data=$OUT/$role.data
  echo "== $role ($(perf report -i "$data" --stdio 2>/dev/null | sed -n 's/^# Samples: \([^ ]*\).*/\1/p') samples)"
  { perf report -i "$data" --no-children --sort dso --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -3; } || true
  echo "-- hottest symbols"
  { perf report -i "$data" --no-children --sort sym --stdio -g none 2>/dev/null | grep -E '^ +[0-9]' | head -15; } || true
  echo "-- time under (self + children)"
  { perf report -i "$data" --children --sort sym --stdio -g none 2>/dev/null | grep -E '^ +[0-9]' |
    grep -E '(__libc_sendmsg|__GI___writev|__recvmmsg|__libc_recvfrom|epoll_wait|aes_gcm_(enc|dec)_update|finish_task_switch|_raw_spin_unlock_irqrestore) *$' |
    head -12; } || true
done
wait $LOADTEST || true
echo "== loadtest report"
grep -v '^\[' "$OUT/report.txt" || true
echo "recordings: $OUT"
