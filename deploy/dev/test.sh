#!/usr/bin/env bash
# Every test of the project, as CI runs them: unit and simulated tests, the certs CLI, and the end-to-end
# suite against real apiservers with real kubectl (spokes firewalled in network namespaces when root, and then
# a real node on spoke-a running containers from images built here).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
started=$(date +%s)
# A one-shot build gains nothing from incremental state, which would double the target directory.
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}
# Each step says how long it took, to see where CI's minutes go.
step() {
  local began
  began=$(date +%s)
  "$@"
  echo "test.sh: $(( $(date +%s) - began )) s for: $*" >&2
}
step bash deploy/dev/deps.sh
step bash deploy/dev/build-kube.sh
step bash deploy/dev/images.sh build test
step shellcheck -x deploy/dev/*.sh .ci/run
step cargo fmt --all --check
# The node runs the tunnel-client image, which holds the static release binary (its own target directory, so
# the flags never invalidate the debug build). The image strips it, so its debug info is not built. It builds
# beside the debug build: each spends long stretches compiling one crate (k8s-openapi alone takes about two
# minutes), which leaves the other core idle.
static_log=$(mktemp)
RUSTFLAGS='-C target-feature=+crt-static' cargo build --release --target x86_64-unknown-linux-gnu \
  --config profile.release.debug=0 --bin tunnel-client --quiet >"$static_log" 2>&1 &
static_build=$!
trap 'kill "$static_build" 2>/dev/null || true; rm -f "$static_log"' EXIT
step cargo build --workspace --bins --tests --benches --quiet
waited=$(date +%s)
if ! wait "$static_build"; then
  cat "$static_log" >&2
  echo "test.sh: the static tunnel-client build failed" >&2
  exit 1
fi
echo "test.sh: the static tunnel-client build ended $(( $(date +%s) - waited )) s after the debug build" >&2
step bash deploy/dev/images.sh build tunnel-client target/x86_64-unknown-linux-gnu/release
step cargo clippy --workspace --all-targets --quiet -- -D warnings
step cargo test --workspace
step bash deploy/dev/fuzz-smoke.sh
echo "all tests passed in $(( $(date +%s) - started )) s"
