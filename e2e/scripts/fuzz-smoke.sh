#!/usr/bin/env bash
# A short run of every fuzz target (CI smoke). FUZZ_SECONDS sets the time per target; a longer
# campaign is the same command with a larger value (see README, "Fuzzing").
set -euo pipefail
cd "$(dirname "$0")/../../mail-runtime"
SECONDS_PER_TARGET=${FUZZ_SECONDS:-20}
export CARGO_TARGET_DIR=${FUZZ_TARGET_DIR:-$HOME/.cache/kubemail/fuzz-target}
# Built as the runtime ships (-O: optimised, no debug assertions) plus overflow checks. A
# dependency's debug_assert! is not what production runs: mail-parser 0.11.9 asserts on a nested
# multipart without its boundary (seeds/mime_message/nested-multipart-without-boundary.eml), a
# message the release build parses fine. -timeout=10: an input that runs longer is a hang (a LIST
# pattern once backtracked for minutes; seeds/imap_command/list-backtracking).
export RUSTFLAGS="${RUSTFLAGS:-} -C overflow-checks=on"

rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked

for target in $(cargo +nightly fuzz list); do
    corpus="$CARGO_TARGET_DIR/corpus/$target"
    mkdir -p "$corpus"
    seeds=()
    [[ -d "fuzz/seeds/$target" ]] && seeds=("fuzz/seeds/$target")
    echo "fuzz-smoke: $target for ${SECONDS_PER_TARGET}s"
    log="$CARGO_TARGET_DIR/fuzz-$target.log"
    status=0
    cargo +nightly fuzz run -O "$target" "$corpus" "${seeds[@]}" -- \
        -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -print_final_stats=1 >"$log" 2>&1 || status=$?
    grep -E '^(Done|stat::number_of_executed_units|stat::peak_rss_mb)|SUMMARY|panicked|ERROR' "$log" || true
    if [[ $status -ne 0 ]]; then
        tail -n 60 "$log" >&2
        echo "fuzz-smoke: $target failed (exit $status); the input is under mail-runtime/fuzz/artifacts/$target" >&2
        exit 1
    fi
done
