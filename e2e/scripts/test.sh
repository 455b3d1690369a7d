#!/usr/bin/env bash
# The test suite: installs what it needs, builds the control plane (cached), runs every test.
set -euo pipefail
cd "$(dirname "$0")/../.."
export KUBEMAIL_WORKSPACE=$PWD
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/kubemail/target}

bash e2e/scripts/install-deps.sh
KUBEMAIL_TOOLS_BIN=$(bash e2e/scripts/build-control-plane.sh | tail -n 1)
export KUBEMAIL_TOOLS_BIN

# The end-to-end tests start the operator and runtime binaries from the target directory.
cargo build --workspace --locked --bins
cargo test --workspace --locked --no-fail-fast
