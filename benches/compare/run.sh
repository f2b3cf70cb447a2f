#!/usr/bin/env bash
# The CPU comparisons in one command: transferlens next to numpy running the published formulas,
# on this machine, in one run (the machines are shared: compare figures of one run only).
#
#   benches/compare/run.sh            # CKA (ratio table), then weight space (% of copy, GB/s)
#   PYTHON=path/to/python benches/compare/run.sh
#
# Needs numpy (pip install numpy). On a GPU machine the GPU tables and the PyTorch side come from
# scripts/build-gpu-bundle.sh (here) and scripts/gpu-check.sh (there).
set -euo pipefail
cd "$(dirname "$0")/../.."
py=${PYTHON:-python3}
# numpy at its best: OpenBLAS picks the kernels for this CPU (a forced core type such as Haswell
# on an AVX-512 machine makes numpy slower and the ratios flattering).
unset OPENBLAS_CORETYPE OPENBLAS_L2_SIZE
if ! "$py" -c 'import numpy' 2>/dev/null; then
    echo "benches/compare/run.sh: $py cannot import numpy; pip install numpy (or set PYTHON)" >&2
    exit 2
fi
echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg), $(date -u '+%Y-%m-%d %H:%M UTC')"
echo
echo "==== linear CKA: transferlens / numpy (feature_space_linear_cka) ===="
"$py" benches/compare/cka.py
echo
echo "==== weight space: transferlens against a copy of the same bytes, timed in the same rounds ===="
echo "     (GB/s = bytes read + written per second; criterion's figures: cargo bench --bench geometry)"
cargo run --quiet --release --example time_weights
echo
echo "==== weight space: numpy, same sizes and unit ===="
"$py" benches/compare/geometry.py
