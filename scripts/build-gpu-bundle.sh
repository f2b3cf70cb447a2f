#!/usr/bin/env bash
# Builds the GPU test binaries in release mode and copies them into gpu-bundle/ with a manifest,
# so that scripts/gpu-check.sh can run them on a GPU machine that has no Rust toolchain (same
# CPU architecture and a glibc at least as new as this machine's).
#
# Usage: scripts/build-gpu-bundle.sh [cargo target selection]
#   default selection: --lib --test cuda --test nvrtc
# Output: gpu-bundle/bin/<name> and gpu-bundle/manifest.txt, one "<name> <path>" line per binary
# (path relative to gpu-bundle/). gpu-bundle/ is ignored by git.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$#" -gt 0 ]; then
    selection=("$@")
else
    selection=(--lib --test cuda --test nvrtc)
fi

bundle=gpu-bundle
rm -rf "$bundle"
mkdir -p "$bundle/bin"

# cargo reports each built executable as a one-line JSON message with an "executable" field;
# test harnesses have "test":true in their profile (plain binaries, built for the integration
# tests, do not).
json=$(cargo test --release --no-run --message-format=json "${selection[@]}")
mapfile -t executables < <(printf '%s\n' "$json" | grep '"reason":"compiler-artifact"' | grep '"test":true},"features"' |
    grep -o '"executable":"[^"]*"' | sed 's/^"executable":"//; s/"$//')
if [ "${#executables[@]}" -eq 0 ]; then
    echo "build-gpu-bundle: cargo built no test executables for: ${selection[*]}" >&2
    exit 1
fi

: >"$bundle/manifest.txt"
for exe in "${executables[@]}"; do
    # target/release/deps/cuda-0123456789abcdef -> cuda
    name=$(basename "$exe" | sed 's/-[0-9a-f]\{16\}$//')
    cp "$exe" "$bundle/bin/$name"
    # Debug info is not needed to run the tests and would make the bundle large.
    if command -v strip >/dev/null; then
        strip --strip-debug "$bundle/bin/$name"
    fi
    echo "$name bin/$name" >>"$bundle/manifest.txt"
done

git rev-parse --short HEAD >"$bundle/commit.txt" 2>/dev/null || true
echo "gpu-bundle: ${#executables[@]} binaries, $(du -sh "$bundle" | cut -f1)"
cat "$bundle/manifest.txt"
