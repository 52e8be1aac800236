#!/usr/bin/env bash
# Builds the CUDA test binaries and the CLI here, and runs them on a GPU machine that has no
# Rust toolchain.
#
#   bash scripts/gpu-check.sh build   # here: needs NVCC (bash .ci/install-cuda.sh prints it)
#   bash scripts/gpu-check.sh run     # on the GPU machine, from the repository root
#
# `build` writes dist/gpu-check/: the release test binaries with --features cuda, the
# `sigsoftmax` CLI, and manifest.txt (binary sizes, shared libraries, newest glibc symbol
# needed). The CUDA runtime and libstdc++ are linked statically; the binaries need glibc (see
# the manifest's GLIBC line) and the NVIDIA driver's libcuda.so at run time, nothing else.
#
# The candle CUDA tests (tests/candle/cuda.rs, feature `candle-cuda`) are not in the bundle:
# candle links cuBLAS, cuRAND and NVRTC, which the PyPI compiler wheels do not provide. Run them
# with cargo on a machine that has the CUDA toolkit and a GPU (see the README).
#
# `run` runs every test binary with --include-ignored (each under a time limit), then
# `sigsoftmax bench --device cuda --json`, and writes summary.txt, tests.log, bench.json and
# gpu.txt into $OUT when it is set, else into dist/gpu-check/report/.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
dist="$root/dist/gpu-check"
mode="${1:-}"

build() {
    if [ -z "${NVCC:-}" ] && ! command -v nvcc >/dev/null; then
        echo "error: nvcc not found; run: eval \"\$(bash .ci/install-cuda.sh)\"" >&2
        exit 1
    fi
    cd "$root"
    export SIGSOFTMAX_STATIC_STDCXX=1
    # The GPU machine is an H200 (sm_90). Each extra architecture adds about 6 MB of kernels
    # to every binary, and the device tool carries at most 64 MiB.
    export SIGSOFTMAX_CUDA_ARCHS="${SIGSOFTMAX_CUDA_ARCHS:-90}"
    rm -rf "$dist"
    mkdir -p "$dist/bin"

    # Test binaries: every compiler artifact of the test profile that has an executable.
    cargo test --release --features cuda --no-run --message-format=json >"$dist/cargo-test.json"
    python3 - "$dist/cargo-test.json" "$dist/bin" <<'PY'
import json, shutil, sys, os
artifacts, out = sys.argv[1], sys.argv[2]
for line in open(artifacts):
    message = json.loads(line)
    if message.get("reason") != "compiler-artifact" or not message.get("profile", {}).get("test"):
        continue
    executable = message.get("executable")
    if executable:
        name = "test-" + message["target"]["name"]
        shutil.copy2(executable, os.path.join(out, name))
        print(name)
PY
    rm "$dist/cargo-test.json"

    cargo build --release --features cuda --bin sigsoftmax
    cp target/release/sigsoftmax "$dist/bin/sigsoftmax"
    # Line tables are kept in release builds; the copies do not need them.
    strip --strip-debug "$dist"/bin/*

    {
        echo "built: $(date -u +%FT%TZ) from $(git rev-parse --short HEAD) ($(git status --porcelain | wc -l) uncommitted paths)"
        echo "nvcc: $("${NVCC:-nvcc}" --version | grep release)"
        echo "archs: $SIGSOFTMAX_CUDA_ARCHS"
        # Tests of the CLI run it from the path cargo compiled into them (CARGO_BIN_EXE_*).
        echo "cli path: $root/target/release/sigsoftmax"
        for binary in "$dist"/bin/*; do
            glibc="$(objdump -T "$binary" | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -n 1)"
            echo "$(basename "$binary"): $(du -h "$binary" | cut -f1), newest symbol $glibc"
            ldd "$binary" | sed 's/^/    /'
        done
    } >"$dist/manifest.txt"
    cat "$dist/manifest.txt"
    du -sh "$dist"
}

run() {
    local report="${OUT:-$dist/report}"
    mkdir -p "$report"
    local summary="$report/summary.txt" log="$report/tests.log"
    : >"$log"
    {
        echo "host: $(hostname), $(date -u +%FT%TZ)"
        echo "glibc: $(ldd --version | head -n 1)"
        cat "$dist/manifest.txt" 2>/dev/null | head -n 3
    } >"$summary"
    nvidia-smi >"$report/gpu.txt" 2>&1 || echo "nvidia-smi failed" >>"$report/gpu.txt"

    # Put the CLI where the CLI tests expect it, when this machine lacks that path.
    local cli_path
    cli_path="$(sed -n 's/^cli path: //p' "$dist/manifest.txt")"
    if [ -n "$cli_path" ] && [ ! -x "$cli_path" ]; then
        mkdir -p "$(dirname "$cli_path")"
        cp "$dist/bin/sigsoftmax" "$cli_path"
    fi

    local failed=0
    for binary in "$dist"/bin/test-*; do
        local name status output
        name="$(basename "$binary")"
        output="$(mktemp)"
        # Test binaries read nothing from disk at run time (golden data is compiled in), but
        # run them from the repository root in case a test expects it.
        if (cd "$root" && timeout 300 "$binary" --include-ignored) >"$output" 2>&1; then
            status=ok
        else
            status="FAILED (exit $?)"
            failed=$((failed + 1))
        fi
        { echo "=== $name"; cat "$output"; } >>"$log"
        echo "$name: $status, $(grep -E '^test result:' "$output" | tail -n 1)" >>"$summary"
        rm -f "$output"
    done

    echo "=== bench" >>"$log"
    if timeout 240 "$dist/bin/sigsoftmax" bench --device cuda --json >"$report/bench.json" 2>>"$log"; then
        echo "bench: ok ($(wc -c <"$report/bench.json") bytes of JSON)" >>"$summary"
    else
        echo "bench: FAILED (exit $?), see tests.log" >>"$summary"
        failed=$((failed + 1))
    fi
    echo "failed steps: $failed" >>"$summary"
    cat "$summary"
    [ "$failed" -eq 0 ]
}

case "$mode" in
build) build ;;
run) run ;;
*)
    echo "usage: bash scripts/gpu-check.sh build|run" >&2
    exit 2
    ;;
esac
