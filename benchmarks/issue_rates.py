"""How fast this x86 CPU issues the inner-loop instruction mixes of mobilec's AVX2 kernels.

    .venv/bin/python benchmarks/issue_rates.py [--seconds 0.3]

Compiles a few straight-line loops of inline assembly with the system C compiler (``cc``) and
times them: per mix, the multiply-add instructions retired per cycle and the multiply-adds per
cycle they do (an fp32 FMA on 8 lanes does 8; vpmaddwd does 16, two int16 products per int32
lane, but needs a separate vpaddd to accumulate). The clock is measured with a chain of dependent
integer adds (one a cycle), so the figures are per cycle of the clock the loops ran at.

This is the evidence behind two default-schedule choices (``schedules/tile_cost.py``): a
broadcast input costs a vector-pipe slot, so fp32 pointwise tiles share each broadcast between
vectors; and the int8 pair kernels (vpmaddwd) keep one vector per broadcast, because their
separate add, not the broadcast, is what fills the pipes.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path

# (name, multiply-adds per instruction, instructions of one unrolled step, multiply-add
# instructions in it). Accumulators are ymm0-ymm11; weights ymm14/ymm15; broadcasts and products
# ymm12/ymm13 (renamed by the CPU, so reusing them adds no dependency).
_FMA = "vfmadd231ps %%ymm14, %%ymm15, %%ymm{a}"
_BCAST = "vbroadcastss {o}(%0), %%ymm{t}"
_PBCAST = "vpbroadcastd {o}(%0), %%ymm{t}"


def _mixes() -> list[tuple[str, int, list[str], int]]:
    fma_only = [_FMA.format(a=a) for a in range(12)]
    one_to_one = [x for a in range(12) for x in (_BCAST.format(o=4 * a, t=12 + a % 2),
                                                  f"vfmadd231ps %%ymm{12 + a % 2}, %%ymm15, %%ymm{a}")]
    one_to_two = [x for a in range(6) for x in (
        _BCAST.format(o=4 * a, t=12 + a % 2),
        f"vfmadd231ps %%ymm{12 + a % 2}, %%ymm14, %%ymm{2 * a}",
        f"vfmadd231ps %%ymm{12 + a % 2}, %%ymm15, %%ymm{2 * a + 1}")]
    pair_one_to_one = [x for a in range(12) for x in (
        _PBCAST.format(o=4 * a, t=12 + a % 2),
        f"vpmaddwd %%ymm{12 + a % 2}, %%ymm14, %%ymm{12 + a % 2}",
        f"vpaddd %%ymm{12 + a % 2}, %%ymm{a}, %%ymm{a}")]
    pair_one_to_two = [x for a in range(6) for x in (
        _PBCAST.format(o=4 * a, t=12),
        f"vpmaddwd %%ymm12, %%ymm14, %%ymm13", f"vpaddd %%ymm13, %%ymm{2 * a}, %%ymm{2 * a}",
        f"vpmaddwd %%ymm12, %%ymm15, %%ymm13", f"vpaddd %%ymm13, %%ymm{2 * a + 1}, %%ymm{2 * a + 1}")]
    pair_only = [x for a in range(12) for x in (f"vpmaddwd %%ymm14, %%ymm15, %%ymm{12 + a % 2}",
                                                f"vpaddd %%ymm{12 + a % 2}, %%ymm{a}, %%ymm{a}")]
    return [
        ("fp32 FMA, no loads", 8, fma_only, 12),
        ("fp32 broadcast + FMA, 1:1 (a row of pixels x 1 vector)", 8, one_to_one, 12),
        ("fp32 broadcast + 2 FMAs, 1:2 (pixels x 2 vectors)", 8, one_to_two, 12),
        ("int16 pairs vpmaddwd + vpaddd, no loads", 16, pair_only, 12),
        ("int16 pairs broadcast + vpmaddwd + vpaddd, 1:1", 16, pair_one_to_one, 12),
        ("int16 pairs broadcast + 2 x (vpmaddwd + vpaddd), 1:2", 16, pair_one_to_two, 12),
    ]


_SOURCE = r"""
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
static float buf[64] __attribute__((aligned(64)));
static double clock_hz(void) {
    long n = 2000000, r = 0;
    double t = now();
    for (long i = 0; i < n; i++) __asm__ volatile("add $1, %%0\n\tadd $1, %%0\n\tadd $1, %%0\n\tadd $1, %%0" : "+r"(r));
    return n * 4 / (now() - t);
}
%(loops)s
int main(int argc, char **argv) {
    double budget = atof(argv[1]);
    int rounds = atoi(argv[2]);
    for (int round = 0; round < rounds; round++) {  /* mixes alternate, each timed against the clock just measured */
%(calls)s
    }
    return 0;
}
"""

_LOOP = r"""
static double mix%(index)d(double budget) {
    long reps = 0; double t0 = now(), dt;
    do {
        for (long i = 0; i < 10000; i++)
            __asm__ volatile(%(body)s :: "r"(buf) : "xmm0","xmm1","xmm2","xmm3","xmm4","xmm5","xmm6","xmm7","xmm8","xmm9","xmm10","xmm11","xmm12","xmm13");
        reps += 10000; dt = now() - t0;
    } while (dt < budget);
    return reps * %(count)d / dt;
}
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=0.05, help="time per mix and round (default 0.05)")
    ap.add_argument("--rounds", type=int, default=40, help="rounds of all mixes, alternating (default 40)")
    args = ap.parse_args()
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise SystemExit("no C compiler (cc) on PATH: apt-get install gcc")
    mixes = _mixes()
    loops = "".join(_LOOP % {"body": " ".join(f'"{i}\\n\\t"' for i in body), "index": n, "count": count}
                    for n, (_, _, body, count) in enumerate(mixes))
    calls = "".join(f'        {{ double hz = clock_hz(); printf("{n} %f\\n", mix{n}(budget) / hz); }}\n'
                    for n in range(len(mixes)))
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = Path(tmp) / "rates.c", Path(tmp) / "rates"
        src.write_text(_SOURCE % {"loops": loops, "calls": calls})
        subprocess.run([cc, "-O2", "-mavx2", "-mfma", str(src), "-o", str(exe)], check=True)
        out = subprocess.run([str(exe), str(args.seconds), str(args.rounds)], check=True, capture_output=True,
                             text=True).stdout
    rates: dict[int, list[float]] = {}
    for line in out.split("\n"):
        if line.strip():
            index, rate = line.split()
            rates.setdefault(int(index), []).append(float(rate))
    print(f"median of {args.rounds} alternating rounds; per cycle of the clock measured before each "
          f"(dependent integer adds)\n")
    print("| mix | multiply-add instructions / cycle | multiply-adds / cycle | spread (10th-90th pct) |")
    print("|---|---:|---:|---:|")
    for index, (name, macs, _, _) in enumerate(mixes):
        r = sorted(rates[index])
        mid, lo, hi = statistics.median(r), r[len(r) // 10], r[-1 - len(r) // 10]
        print(f"| {name} | {mid:.2f} | {mid * macs:.1f} | {lo:.2f}-{hi:.2f} |")


if __name__ == "__main__":
    main()
