#!/usr/bin/env bash
# Fuzz smoke (issue 8): builds every cargo-fuzz target once and runs each for
# ${FUZZ_SECONDS:-60} s from its seed corpus (fuzz/corpus/<target>). Exit 1 on any crash,
# leak, timeout or OOM; the reproducer is left in fuzz/artifacts/<target>/.
#
# Stable toolchain: RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass its -Z flags (AddressSanitizer
# included). The binaries are run directly so the run never rebuilds with other flags.
set -euo pipefail
cd "$(dirname "$0")"
secs="${FUZZ_SECONDS:-60}"
export RUSTC_BOOTSTRAP=1
# The fuzz build always lives in fuzz/target (its flags differ from the main build's).
unset CARGO_TARGET_DIR

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

targets=$(cargo fuzz list)
cargo fuzz build -O
bin="target/$(rustc -vV | sed -n 's/^host: //p')/release"

failed=()
for t in $targets; do
    mkdir -p "corpus/$t" "artifacts/$t"
    # A scratch copy of the corpus: new inputs found in CI are not written back.
    work=$(mktemp -d)
    # (A fuzzer running locally on the same corpus may delete files mid-copy: not an error.)
    cp -r "corpus/$t/." "$work/" 2>/dev/null || true
    echo "== $t: ${secs}s"
    if "$bin/$t" -max_total_time="$secs" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix="artifacts/$t/" "$work" 2>"artifacts/$t.log"; then
        grep -E '^stat::number_of_executed_units' "artifacts/$t.log" || true
    else
        echo "!! $t crashed; see fuzz/artifacts/$t.log and fuzz/artifacts/$t/"
        tail -n 40 "artifacts/$t.log"
        failed+=("$t")
    fi
    rm -rf "$work"
done

if ((${#failed[@]})); then
    echo "fuzz smoke: crashes in ${failed[*]}"
    exit 1
fi
echo "fuzz smoke: $(echo $targets | wc -w) targets, ${secs}s each, no crash"
