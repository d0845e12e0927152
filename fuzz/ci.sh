#!/usr/bin/env bash
# Fuzzing on stable Rust: cargo-fuzz with `-s none` (no sanitizer, hence no
# nightly flag). Usage:
#   fuzz/ci.sh [TARGET...]          build every target once, run each given
#                                   target (default: all) for FUZZ_SECONDS
#                                   (default 60), print its stats; exit 1 on
#                                   a crash, with the input and how to replay it
#   fuzz/ci.sh cmin TARGET [DIR...] minimise fuzz/corpus/TARGET, together with
#                                   the inputs of DIRs (say, a long run's corpus)
#
# New inputs a run finds go to a scratch directory: the committed corpus
# (fuzz/corpus/<target>) changes only through cmin or a deliberate copy.
# The input of every bug found goes to fuzz/regressions/<target>/: runs read
# it too, cmin leaves it alone, tests/fuzz_corpus.rs replays it.
set -euo pipefail
caller_dir=$PWD
cd "$(dirname "$0")"
export CARGO_TERM_COLOR=never

seconds=${FUZZ_SECONDS:-60}
mode=run
if [ "${1:-}" = cmin ]; then
    mode=cmin
    shift
    [ $# -ge 1 ] || { echo "usage: fuzz/ci.sh cmin TARGET [DIR...]" >&2; exit 2; }
fi

if ! command -v cargo-fuzz >/dev/null; then
    echo "installing cargo-fuzz"
    cargo install cargo-fuzz --locked --version 0.13.2
fi

# One build of every target; `cargo fuzz run` below reuses it as long as it
# gets the same flags.
build_flags=(-s none)
cargo fuzz build "${build_flags[@]}"

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

if [ "$mode" = cmin ]; then
    target=$1
    shift
    more_inputs=()
    for dir in "$@"; do more_inputs+=("$(cd "$caller_dir" && realpath "$dir")"); done
    # Keep one input per coverage edge (-use_counters=0 ignores hit counts,
    # which would keep ten times the files for little gain): the committed
    # corpus stays a few dozen KB, and every run re-grows the rest from it.
    cargo fuzz run "${build_flags[@]}" "$target" "$scratch" "corpus/$target" "${more_inputs[@]}" -- \
        -merge=1 -use_counters=0 -timeout=10 2>&1 | grep -E '^MERGE-OUTER: [0-9]+ new files'
    rm -rf "corpus/$target"
    mv "$scratch" "corpus/$target"
    chmod 755 "corpus/$target"
    echo "corpus/$target: $(ls "corpus/$target" | wc -l) files, $(du -sh --apparent-size "corpus/$target" | cut -f1)"
    exit 0
fi

mapfile -t targets < <(cargo fuzz list)
[ $# -eq 0 ] || targets=("$@")

crashed=()
summary=()
for target in "${targets[@]}"; do
    echo
    echo "=== fuzz $target for ${seconds}s"
    mkdir -p "$scratch/$target" "corpus/$target" "regressions/$target"
    log="$scratch/$target.log"
    set +e
    # -timeout: one input running for 10 s is a hang, hence a finding.
    cargo fuzz run "${build_flags[@]}" "$target" "$scratch/$target" "corpus/$target" "regressions/$target" -- \
        -max_total_time="$seconds" -timeout=10 -print_final_stats=1 2>&1 |
        tee "$log" | grep -E '^#[0-9]+[[:space:]]+(INITED|DONE)|^stat::|^SUMMARY|panicked|Test unit written'
    status=${PIPESTATUS[0]}
    set -e
    last=$(grep -E '^#[0-9]+[[:space:]]' "$log" | tail -1 || true)
    field() { sed -nE "s/.*[[:space:]]$1: ([^ ]+).*/\\1/p" <<<"$last"; }
    execs=$(sed -nE 's/^stat::number_of_executed_units: *//p' "$log")
    rate=$(sed -nE 's/^stat::average_exec_per_sec: *//p' "$log")
    summary+=("$(printf '%-18s %12s execs %8s exec/s  cov %6s  ft %7s  corpus %s' \
        "$target" "${execs:-?}" "${rate:-?}" "$(field cov)" "$(field ft)" "$(field corp)")")
    if [ "$status" -ne 0 ]; then
        artifact=$(sed -nE 's/.*Test unit written to (.*)$/\1/p' "$log" | tail -1)
        crashed+=("$target")
        echo "!!! $target failed (exit $status); input: fuzz/${artifact#./}"
        echo "!!! replay: (cd fuzz && cargo fuzz run -s none $target ${artifact:-<input>})"
        echo "!!! then fix it and copy the input to fuzz/regressions/$target/ (tests/fuzz_corpus.rs replays it)"
    fi
done

echo
echo "=== fuzz summary (${seconds}s per target)"
printf '%s\n' "${summary[@]}"
if [ ${#crashed[@]} -gt 0 ]; then
    echo "fuzz: crashes in ${crashed[*]}"
    exit 1
fi
