#!/usr/bin/env bash
# Every test of the project, as CI runs them: unit and simulated tests, the certs CLI, and the end-to-end
# suite against real apiservers with real kubectl (spokes firewalled in network namespaces when root).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
started=$(date +%s)
bash deploy/dev/deps.sh
bash deploy/dev/build-kube.sh
shellcheck deploy/dev/*.sh .ci/run
cargo build --workspace --bins --tests --benches --quiet
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo test --workspace
echo "all tests passed in $(( $(date +%s) - started )) s"
