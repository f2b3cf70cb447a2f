#!/usr/bin/env bash
# Runs the prebuilt test binaries of gpu-bundle/ (see scripts/build-gpu-bundle.sh) on a machine
# with a CUDA GPU, requiring the device and NVRTC (TL_REQUIRE_CUDA=1, TL_REQUIRE_NVRTC=1: a
# test that would skip fails instead), and prints one line per binary: passed or failed, the
# number of tests, seconds. Then it runs the bundled benchmarks (manifest entries with --bench)
# and prints their tables, and, where python3 imports torch, the PyTorch sides of the comparisons
# (benches/compare/cka_torch.py, mlp_torch.py, cnn_torch_gpu.py). Needs no Rust toolchain. Exit status: 0 when every binary
# passed.
#
# Usage: scripts/gpu-check.sh [bundle folder, default gpu-bundle] [extra test-binary arguments]
# Logs: <bundle>/logs/<name>.log (or $TL_GPU_LOG_DIR).
#
# libnvrtc.so.13 and libcublas.so.13 must be loadable: from the CUDA 13 toolkit, or from the pip
# packages nvidia-cuda-nvrtc and nvidia-cublas. If the dynamic loader does not find them, the
# script looks in $CUDA_HOME, /usr/local/cuda and the nvidia packages of python3, and adds the
# folder to LD_LIBRARY_PATH.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bundle=${1:-$root/gpu-bundle}
shift || true
manifest=$bundle/manifest.txt
if [ ! -f "$manifest" ]; then
    echo "gpu-check: $manifest not found; build it with scripts/build-gpu-bundle.sh" >&2
    exit 2
fi
logs=${TL_GPU_LOG_DIR:-$bundle/logs}
mkdir -p "$logs"

export TL_REQUIRE_CUDA=1 TL_REQUIRE_NVRTC=1
# The gpu bench's CNN (e) reads the study-sized CNN's specification from the bundle.
[ -f "$bundle/compare/cnn_spec.json" ] && export TL_CNN_SPEC=${TL_CNN_SPEC:-$bundle/compare/cnn_spec.json}

# Finds CUDA 13 library $1 (e.g. libnvrtc.so.13) for the dynamic loader: already known to it,
# on LD_LIBRARY_PATH, in $CUDA_HOME or /usr/local/cuda, or in python3's nvidia packages (the
# pip wheels nvidia-cuda-nvrtc, nvidia-cublas); adds the folder found to LD_LIBRARY_PATH.
find_lib() {
    local lib=$1
    if ldconfig -p 2>/dev/null | grep -q "${lib//./\\.}"; then
        return 0
    fi
    local d
    for d in ${LD_LIBRARY_PATH:+${LD_LIBRARY_PATH//:/ }}; do
        [ -e "$d/$lib" ] && return 0
    done
    local candidates=("${CUDA_HOME:-/nonexistent}/lib64" /usr/local/cuda/lib64 /usr/local/cuda-13*/lib64 /usr/local/cuda/targets/x86_64-linux/lib)
    if command -v python3 >/dev/null; then
        while IFS= read -r d; do candidates+=("$d"); done < <(python3 - <<'PY' 2>/dev/null
import glob, os, site
roots = site.getsitepackages() + [site.getusersitepackages()]
for r in roots:
    for p in glob.glob(os.path.join(r, "nvidia", "*", "lib")):
        print(p)
PY
        )
    fi
    for d in "${candidates[@]}"; do
        if [ -e "$d/$lib" ]; then
            export LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
            echo "gpu-check: $lib from $d"
            return 0
        fi
    done
    echo "gpu-check: $lib not found; the tests that need it will fail" >&2
}
find_lib libnvrtc.so.13
find_lib libcublas.so.13
find_lib libcublasLt.so.13

# ptxas, when present, turns on the register/spill report of the nvrtc test.
if [ -z "${TL_PTXAS:-}" ]; then
    for p in "$(command -v ptxas 2>/dev/null)" "${CUDA_HOME:-/nonexistent}/bin/ptxas" /usr/local/cuda/bin/ptxas; do
        if [ -n "$p" ] && [ -x "$p" ]; then
            export TL_PTXAS=$p
            break
        fi
    done
fi

if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | sed 's/^/gpu-check: GPU: /'
fi
[ -f "$bundle/commit.txt" ] && echo "gpu-check: bundle built from commit $(cat "$bundle/commit.txt")"

results=()
failed=0
benches=()
run_binary() {
    local name=$1 path=$2 manifest_args=$3
    shift 3
    # Arguments: from the manifest (--nocapture for tests, --bench for benches), then the
    # script's extra arguments.
    read -r -a args <<<"${manifest_args:---nocapture}"
    bin=$bundle/$path
    log=$logs/$name.log
    start=$(date +%s.%N)
    if [ -x "$bin" ]; then
        "$bin" "${args[@]}" "$@" >"$log" 2>&1
        rc=$?
    else
        echo "missing or not executable: $bin" >"$log"
        rc=127
    fi
    end=$(date +%s.%N)
    secs=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')
    # "test result: ok. 9 passed; 0 failed; ..." (one line per harness run)
    tests=$(grep -o '[0-9]* passed; [0-9]* failed' "$log" | awk '{ p += $1; f += $3 } END { printf "%d passed, %d failed", p, f }')
    if [ "$rc" -eq 0 ]; then status=passed; else status="FAILED (exit $rc)"; failed=1; fi
    results+=("$(printf '%-16s %-18s %-24s %8s' "$name" "$status" "$tests" "$secs")")
    # Keep the lines a reader needs: kernel counts, ptxas verdict, skips; failures when failed
    # (some passing tests panic on purpose, inside a panic boundary).
    pattern='NVRTC [0-9]|compiled [0-9]+ kernels|ptxas sm_90: |skipped|device 0: '
    [ "$rc" -ne 0 ] && pattern="$pattern|panicked|FAILED|assertion|left:|right:"
    grep -E "$pattern" "$log" | head -40 | sed "s/^/  [$name] /"
}

# Tests first, then the benchmarks (which print tables), each in manifest order.
while read -r name path manifest_args; do
    [ -z "$name" ] && continue
    if [ "$manifest_args" = "--bench" ]; then
        benches+=("$name $path $manifest_args")
        continue
    fi
    run_binary "$name" "$path" "$manifest_args" "$@"
done <"$manifest"
for b in "${benches[@]}"; do
    read -r name path manifest_args <<<"$b"
    run_binary "$name" "$path" "$manifest_args"
    echo
    echo "==== $name (benchmark) ===="
    cat "$logs/$name.log"
done

# PyTorch side by side, where python3 has torch: benches/compare/cka_torch.py (the published CKA
# formula), mlp_torch.py and cnn_torch_gpu.py (torch.func.vmap over K perturbed models; they
# read the gpu bench's log for the ratios).
run_torch() {
    local script=$1 title=$2
    shift 2
    local path=$bundle/compare/$script
    [ -f "$path" ] || path=$root/benches/compare/$script
    echo
    echo "==== PyTorch: $title ===="
    start=$(date +%s.%N)
    PYTHONUNBUFFERED=1 python3 "$path" "$@" 2>&1 | tee "$logs/${script%.py}.log"
    rc=${PIPESTATUS[0]}
    end=$(date +%s.%N)
    secs=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')
    if [ "$rc" -eq 0 ]; then status=passed; else status="FAILED (exit $rc)"; failed=1; fi
    results+=("$(printf '%-16s %-18s %-24s %8s' "$script" "$status" "-" "$secs")")
}
if python3 -c 'import torch' 2>/dev/null; then
    run_torch cka_torch.py "the published feature-space CKA formula, minibatch HSIC" --transferlens-log "$logs/gpu.log"
    run_torch mlp_torch.py "torch.func.vmap over K perturbed models" --transferlens-log "$logs/gpu.log"
    run_torch cnn_torch_gpu.py "torch.func.vmap over K perturbed CNNs" --transferlens-log "$logs/gpu.log"
else
    echo "gpu-check: python3 with torch not found; the PyTorch comparisons are skipped"
fi

# The Python package with CUDA tensors (bindings/python/tests/test_cuda.py): the wheel of
# `maturin build` in <bundle>/python/ when there is one (installed without dependencies), else
# python3's own transferlens; needs pytest and a CUDA torch.
py_path=$(mktemp -d); for w in "$bundle"/python/*.whl; do [ -f "$w" ] && python3 -m pip install -q --no-deps --target "$py_path" "$w"; done
if PYTHONPATH="$py_path${PYTHONPATH:+:$PYTHONPATH}" python3 -c 'import transferlens, pytest, torch; assert torch.cuda.is_available()' 2>/dev/null; then
    echo; echo "==== Python: CUDA tensors through DLPack ===="
    PYTHONPATH="$py_path${PYTHONPATH:+:$PYTHONPATH}" python3 -m pytest -q -p no:cacheprovider "$root/bindings/python/tests/test_cuda.py" >"$logs/python_cuda.log" 2>&1
    rc=$?; tail -n 1 "$logs/python_cuda.log"; [ "$rc" -eq 0 ] || { cat "$logs/python_cuda.log"; failed=1; }
else
    echo "gpu-check: python3 lacks transferlens (a wheel in $bundle/python/), pytest or a CUDA torch; the Python CUDA test is skipped"
fi

echo
printf '%-16s %-18s %-24s %8s\n' "binary" "result" "tests" "seconds"
printf '%s\n' "${results[@]}"
exit "$failed"
