#!/usr/bin/env bash
# Builds the GPU test binaries in release mode and copies them into gpu-bundle/ with a manifest,
# so that scripts/gpu-check.sh can run them on a GPU machine that has no Rust toolchain (same
# CPU architecture and a glibc at least as new as this machine's).
#
# Usage: scripts/build-gpu-bundle.sh [cargo target selection]
#   default selection: --lib --test cuda --test cuda_cka --test cuda_mlp --test cuda_cnn --test cuda_params --test nvrtc --bench gpu
#   a "--bench NAME" target is bundled too; gpu-check.sh runs it with --bench, after the tests
# Everything is built with the crate's `bench` feature, which the GPU benchmark requires (the
# benchmark knobs TL_CUDA_GRAM and TL_CKA_PHASES, and the test of every Gram algorithm).
# Output: gpu-bundle/bin/<name> and gpu-bundle/manifest.txt, one "<name> <path> [arguments]"
# line per binary (path relative to gpu-bundle/). gpu-bundle/ is ignored by git.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$#" -gt 0 ]; then
    selection=("$@")
else
    selection=(--lib --test cuda --test cuda_cka --test cuda_mlp --test cuda_cnn --test cuda_params --test nvrtc --bench gpu)
fi

bundle=gpu-bundle
rm -rf "$bundle"
mkdir -p "$bundle/bin"

# cargo reports each built executable as a one-line JSON message with an "executable" field;
# test harnesses have "test":true in their profile (plain binaries, built for the integration
# tests, do not).
json=$(cargo test --release --no-run --message-format=json --features bench "${selection[@]}")
mapfile -t artifacts < <(printf '%s\n' "$json" | grep '"reason":"compiler-artifact"' |
    grep '"test":true},"features"' | grep '"executable":"')
if [ "${#artifacts[@]}" -eq 0 ]; then
    echo "build-gpu-bundle: cargo built no test executables for: ${selection[*]}" >&2
    exit 1
fi

: >"$bundle/manifest.txt"
for line in "${artifacts[@]}"; do
    exe=$(printf '%s' "$line" | grep -o '"executable":"[^"]*"' | sed 's/^"executable":"//; s/"$//')
    # A bench target runs its measurements with --bench; tests run with --nocapture.
    args=--nocapture
    if printf '%s' "$line" | grep -q '"kind":\["bench"\]'; then
        args=--bench
    fi
    # target/release/deps/cuda-0123456789abcdef -> cuda
    name=$(basename "$exe" | sed 's/-[0-9a-f]\{16\}$//')
    cp "$exe" "$bundle/bin/$name"
    # Debug info is not needed to run the tests and would make the bundle large.
    if command -v strip >/dev/null; then
        strip --strip-debug "$bundle/bin/$name"
    fi
    echo "$name bin/$name $args" >>"$bundle/manifest.txt"
done

# The PyTorch side-by-side scripts, run by gpu-check.sh where torch imports.
mkdir -p "$bundle/compare"
cp benches/compare/cka_torch.py benches/compare/mlp_torch.py "$bundle/compare/"
# The CNN comparison: the study-sized CNN's specification (the gpu bench reads it too, through
# TL_CNN_SPEC) and the PyTorch model builder that cnn_torch_gpu.py imports.
for f in cnn_spec.json cnn_torch.py cnn_torch_gpu.py; do
    [ -f "benches/compare/$f" ] && cp "benches/compare/$f" "$bundle/compare/"
done

git rev-parse --short HEAD >"$bundle/commit.txt" 2>/dev/null || true
echo "gpu-bundle: ${#artifacts[@]} binaries, $(du -sh "$bundle" | cut -f1)"
cat "$bundle/manifest.txt"
