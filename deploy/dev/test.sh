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
bash deploy/dev/deps.sh
bash deploy/dev/build-kube.sh
bash deploy/dev/images.sh build test
shellcheck -x deploy/dev/*.sh .ci/run
cargo fmt --all --check
cargo build --workspace --bins --tests --benches --quiet
# The node runs the tunnel-client image, which holds the static release binary (its own target directory, so
# the flags never invalidate the debug build).
RUSTFLAGS='-C target-feature=+crt-static' cargo build --release --target x86_64-unknown-linux-gnu --bin tunnel-client \
  --quiet
bash deploy/dev/images.sh build tunnel-client target/x86_64-unknown-linux-gnu/release
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo test --workspace
bash deploy/dev/fuzz-smoke.sh
echo "all tests passed in $(( $(date +%s) - started )) s"
