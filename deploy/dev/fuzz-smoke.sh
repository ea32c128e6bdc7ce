#!/usr/bin/env bash
# A short fuzz run of every decoder in proto/fuzz: built with libFuzzer's coverage instrumentation on the stable
# toolchain (cargo-fuzz would want nightly only for its sanitizers), each target fed for a few seconds.
# A crash fails; so does a target that does not build.
#
# Usage: fuzz-smoke.sh [SECONDS_PER_TARGET]   (default 8)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
SECONDS_PER_TARGET=${1:-8}
cd "$ROOT/proto/fuzz"
targets=$(sed -n 's/^name = "\([a-z_]*\)"$/\1/p' Cargo.toml | grep -v '^tether-proto-fuzz$' || true)
[ -n "$targets" ] || { echo "fuzz-smoke.sh: no targets in proto/fuzz/Cargo.toml" >&2; exit 1; }
# What cargo-fuzz passes, minus the sanitizer: inline counters and compare tracing guide libFuzzer.
export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Cdebug-assertions -Coverflow-checks"
# An explicit --target keeps RUSTFLAGS off build scripts and proc macros, which cannot link the coverage hooks.
host=$(rustc -vV | sed -n 's/^host: //p')
cargo build --quiet --release --bins --target "$host"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for target in $targets; do
  mkdir -p "$work/$target" "artifacts/$target"
  # -runs bounds the work where the machine is fast; the time bounds it where it is slow.
  if ! ./target/"$host"/release/"$target" "$work/$target" -max_total_time="$SECONDS_PER_TARGET" -runs=2000000 \
      -max_len=8192 -artifact_prefix="artifacts/$target/" >"$work/$target.log" 2>&1; then
    tail -n 40 "$work/$target.log" >&2
    echo "fuzz-smoke.sh: $target failed; the input is in proto/fuzz/artifacts/$target/" >&2
    exit 1
  fi
  echo "fuzz $target: $(grep -o 'Done [0-9]* runs' "$work/$target.log" || echo 'ran')"
done
