#!/usr/bin/env bash
# Benchmarks kubemail beside Postfix and Dovecot in one run (see bench/run.py). Not part of the
# test run. Results go to results/bench-<time>/ (report.md, chart.png), which git ignores.
#
#   bash bench/run.sh                 # the full workloads (10,000 SMTP messages, 100,000-message mailbox)
#   bash bench/run.sh --mailbox 20000 --smtp-messages 2000 --runs 3    # a quicker pass
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/kubemail/target}
bash e2e/scripts/install-deps.sh
python3 -c 'import matplotlib, yaml' 2>/dev/null || python3 -m pip install -q matplotlib pyyaml
cargo build --locked --release -p mail-runtime -p kubemail-load
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
out="$PWD/results/bench-$(date -u +%Y%m%d-%H%M%S)"  # absolute: useradd refuses a relative home
python3 bench/run.py --runtime "$CARGO_TARGET_DIR/release/mail-runtime" --load "$CARGO_TARGET_DIR/release/kubemail-load" --out "$out" "$@"
