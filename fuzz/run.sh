#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 20) with libFuzzer on the
# stable toolchain: coverage instrumentation through stable rustc flags
# (sancov), no sanitizer (that part needs nightly). The committed corpora in
# fuzz/corpus/<target>/ and the seeds are read; new inputs go to a scratch
# corpus under the target directory, so a run leaves the tree clean (merge
# them into fuzz/corpus with libFuzzer's -merge=1 after a long run). A crash
# makes this script fail and leaves the input in fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-20}"
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
 -Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
# An explicit --target keeps these flags off build scripts and proc macros.
triple="$(rustc -vV | sed -n 's/^host: //p')"
cargo build --release --locked --bins --target "$triple"
bin="$CARGO_TARGET_DIR/$triple/release"
status=0
for target in token auth_frame envelope config ws_decoder; do
  scratch="$CARGO_TARGET_DIR/corpus/$target"
  mkdir -p "$scratch" "corpus/$target" "artifacts/$target"
  echo "== fuzz $target for ${seconds}s"
  if ! "$bin/$target" "$scratch" "corpus/$target" "seeds/$target" \
      -max_total_time="$seconds" -max_len=8192 -timeout=10 -rss_limit_mb=2048 \
      -artifact_prefix="artifacts/$target/" -print_final_stats=1 2>"artifacts/$target/last.log"; then
    echo "fuzz $target: FAILED (see fuzz/artifacts/$target/)"
    tail -30 "artifacts/$target/last.log"
    status=1
  else
    grep -E "stat::number_of_executed_units|stat::new_units_added" "artifacts/$target/last.log" | tr '\n' ' '
    echo
  fi
done
exit $status
