#!/usr/bin/env python3
"""Peak memory and time of `tlens cka` on two large activation files, side by side for one or
more builds of tlens, in one run.

    pip install numpy
    cargo build --release
    python3 benches/compare/cka_memory.py                                # target/release/tlens
    python3 benches/compare/cka_memory.py --tlens before/tlens --tlens target/release/tlens

Data: two safetensors files of one f32 layer of ROWS x COLS each (200000 x 512 by default:
410 MB a file); B is a noisy linear map of A, so that CKA is neither 0 nor 1, and both get an
offset (--offset, 2 by default: a mean larger than the spread, which the whole-data path copies
centered before its products; --offset 0 lets it use the layers in place). The files are
written to a temporary folder and removed at the end.

Each build runs `tlens cka A B --json --backend cpu` with the files in the page cache ("warm"; a
run before the measured ones puts them there) and after the files' pages were dropped from it
("cold": posix_fadvise DONTNEED on both files, which drops only these files' pages). The peak
resident set comes from the kernel's accounting of the child (wait4's ru_maxrss); stderr is kept
to count progress lines (stderr is a pipe here, not a terminal). A child's peak starts at its
parent's resident set at the fork, so the data are written by a child process and this one stays
small; `tlens --version`, measured the same way, gives that floor.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time


def write_data(folder, rows, cols, offset):
    """Writes a.safetensors and b.safetensors (run in a child process: see the module docs)."""
    import numpy as np

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from safetensors_io import write_safetensors

    rng = np.random.default_rng(1)
    x = rng.standard_normal((rows, cols), dtype=np.float32)
    mix = rng.standard_normal((cols, cols), dtype=np.float32) / np.sqrt(cols)
    y = x @ mix + 0.5 * rng.standard_normal((rows, cols), dtype=np.float32)
    x += offset
    y += offset
    for name, data in (("a", x), ("b", y)):
        path = os.path.join(folder, f"{name}.safetensors")
        write_safetensors(path, [("layer", data)])
        with open(path, "rb+") as h:
            os.fsync(h.fileno())  # written back, so that DONTNEED can drop the pages


def drop_from_page_cache(path):
    with open(path, "rb") as f:
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def measure(command):
    """(peak RSS in kB, wall seconds, CPU seconds, stdout, stderr) of one run of `command`."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(command, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if proc.returncode != 0:
        sys.exit(f"{command} failed ({proc.returncode}): {stderr}")
    return usage.ru_maxrss, wall, usage.ru_utime + usage.ru_stime, stdout, stderr


def run(tlens, a, b):
    """(peak RSS in kB, wall seconds, CPU seconds, CKA value, stderr lines) of one `tlens cka`."""
    rss, wall, cpu, stdout, stderr = measure([tlens, "cka", a, b, "--json", "--backend", "cpu"])
    return rss, wall, cpu, json.loads(stdout)["values"][0][0], stderr.splitlines()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tlens", action="append", help="a tlens binary (repeat for side by side)")
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--cols", type=int, default=512)
    p.add_argument("--offset", type=float, default=2.0, help="added to every value")
    p.add_argument("--repeats", type=int, default=3, help="measured runs per build and cache state")
    p.add_argument("--write-data", metavar="FOLDER", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.write_data:
        write_data(args.write_data, args.rows, args.cols, args.offset)
        return
    builds = args.tlens or ["target/release/tlens"]

    folder = tempfile.mkdtemp(prefix="tl-cka-memory-")
    try:
        subprocess.run([sys.executable, __file__, "--write-data", folder, "--rows", str(args.rows),
                        "--cols", str(args.cols), "--offset", str(args.offset)], check=True)
        a, b = os.path.join(folder, "a.safetensors"), os.path.join(folder, "b.safetensors")
        size = os.path.getsize(a)
        print(f"{args.rows} x {args.cols} f32 per file ({size / 1e6:.0f} MB each, offset {args.offset}), "
              f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the start")
        print(f"{'build':40} {'cache':5} {'peak RSS kB':>12} {'wall s':>8} {'CPU s':>7} {'progress lines':>15}  CKA")
        for tlens in builds:
            floor = measure([tlens, "--version"])[0]
            print(f"{tlens:40} {'-':5} {floor:>12,} {'-':>8} {'-':>7} {'-':>15}  (tlens --version: the floor)")
            run(tlens, a, b)  # the files into the page cache
            for cache in ("warm", "cold"):
                for _ in range(args.repeats):
                    if cache == "cold":
                        drop_from_page_cache(a)
                        drop_from_page_cache(b)
                    rss, wall, cpu, value, lines = run(tlens, a, b)
                    print(f"{tlens:40} {cache:5} {rss:>12,} {wall:>8.2f} {cpu:>7.2f} {len(lines):>15}  {value!r}")
        print(f"load average {os.getloadavg()[0]:.1f} at the end")
    finally:
        shutil.rmtree(folder)


if __name__ == "__main__":
    main()
