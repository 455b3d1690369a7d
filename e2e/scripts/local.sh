#!/usr/bin/env bash
# The main command: kubemail on a real single-node cluster on this machine (kubelet + containerd
# in a network namespace of its own), installed with helm. `--check` verifies and tears down.
set -euo pipefail
cd "$(dirname "$0")/../.."
export KUBEMAIL_WORKSPACE=$PWD
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/kubemail/target}

bash e2e/scripts/install-deps.sh
KUBEMAIL_TOOLS_BIN=$(bash e2e/scripts/build-control-plane.sh | tail -n 1)
export KUBEMAIL_TOOLS_BIN

cargo build --locked --quiet -p kubemail-operator -p mail-runtime -p kubemail-e2e
export KUBEMAIL_OPERATOR_BIN="$CARGO_TARGET_DIR/debug/kubemail-operator"
export KUBEMAIL_RUNTIME_BIN="$CARGO_TARGET_DIR/debug/mail-runtime"
"$CARGO_TARGET_DIR/debug/kubemail-local" "$@"
