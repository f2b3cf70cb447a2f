#!/usr/bin/env bash
# One command for the MPI examples: builds the library with cargo (a no-op when it is up to
# date), builds sharded.c and sharded.cpp with the MPI compilers, and runs each on
# ${TL_MPI_RANKS:-2} ranks with mpirun. Exits non-zero when a build fails or an example reports
# a difference from the single-process answer over its bound.
# Needs MPI's compilers and mpirun (Debian, Ubuntu: apt-get install libopenmpi-dev openmpi-bin).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
ranks="${TL_MPI_RANKS:-2}"

for tool in mpicc mpicxx mpirun; do
    command -v "$tool" >/dev/null 2>&1 || {
        echo "$tool not found: install MPI (apt-get install libopenmpi-dev openmpi-bin)" >&2
        exit 1
    }
done

(cd "$root" && cargo build --release --lib --quiet)
make --no-print-directory -C "$here" LIBDIR="$root/target/release" BUILD="$root/target/mpi-example"

# --oversubscribe: more ranks than cores is fine for an example. OpenMPI refuses to run as root
# unless told that it is meant.
launch=(mpirun -np "$ranks" --oversubscribe)
if [ "$(id -u)" = 0 ]; then
    launch+=(--allow-run-as-root)
fi
for example in sharded_c sharded_cpp; do
    echo "== $example (mpirun -np $ranks)"
    "${launch[@]}" "$root/target/mpi-example/$example"
done
