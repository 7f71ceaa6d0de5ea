"""Static estimate of ARM NEON kernel speed, for when there is no phone to measure on.

    .venv/bin/python benchmarks/neon_estimate.py [--model mobilenet_v3_large | FILE.onnx] [--int8]
        [--out benchmarks/results/neon_estimate.md]

Compiles the model untuned for aarch64 (cortex-a76 preset, 4 cores) with mobilec's own pipeline,
splits the generated AArch64 assembly into kernels (TVM's ``__tvm_parallel_lambda`` bodies belong
to the kernel they follow), finds each kernel's innermost loops (a basic block that ends with a
conditional branch back to its own label) that contain vector FMAs, and runs ``llvm-mca`` on each
loop body for Cortex-A76 and Cortex-A55. The FMA-pipe utilisation of a loop is

    vector fmla per iteration / (Block RThroughput * FMA pipes)

This is a static, compute-only estimate of the innermost loops' steady state: no cache misses or
memory stalls, no loop overheads outside the innermost loop, no threading. It is not a latency.

Caveat on LLVM 14's scheduling models (the llvm-mca installed here): ``-mcpu=cortex-a76`` uses the
Cortex-A57 model, which issues one 128-bit fmla per cycle (a real A76 issues two), and the
Cortex-A55 model issues two 128-bit fmla per cycle (a real A55 issues one). So the main columns
take every other resource's bound from llvm-mca (the loop without its fmla) and the fmla bound
from the hardware constants below; a "raw" column keeps the model's own Block RThroughput.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from mobilec.schedules.kinds import Kind
from mobilec.targets import CPUS

# 128-bit FMA pipes per core, i.e. `fmla vX.4s` issued per cycle on the real hardware: the CPU
# table's ``fma_pipes`` (targets.py), for the AArch64 cores that have it
AARCH64 = {name: c for (arch, name), c in CPUS.items() if arch == "aarch64"}
FMA_PIPES = {name: c.fma_pipes for name, c in AARCH64.items() if c.fma_pipes}
CORES = tuple(FMA_PIPES)
GOAL = 0.80  # the goal: pointwise inner loops >= 80% FMA utilisation on both cores
ITERATIONS = 200

LABEL = re.compile(r"^([A-Za-z_.$][\w.$]*):")
FUNC_TYPE = re.compile(r"^\s*\.type\s+([^,\s]+),\s*@function")
BRANCH = re.compile(r"^(?:b\.\w+|cbn?z|tbn?z)\s+(?:.*,\s*)?(\.LBB\w+)$")
VECTOR_FMLA = re.compile(r"^fmla\s+v\d+\.4s\b")
VECTOR_SDOT = re.compile(r"^sdot\s+v\d+\.4s\b")  # int8 kernels: 16 multiply-adds, on the FMA pipes
VECTOR_SMULL = re.compile(r"^sm(?:ull|lal)2?\s+v\d+\.8h\b")  # int8 without sdot: 8 products into int16
MACS = {VECTOR_FMLA: 4, VECTOR_SDOT: 16, VECTOR_SMULL: 8}  # multiply-adds per instruction
# no dot product: int8 1x1 kernels on smull/smlal/sadalp (the A53's preset keeps int8 in float32)
WIDENING_CORES = tuple(name for name, c in AARCH64.items() if c.int16_sums)
RTHROUGHPUT = re.compile(r"Block RThroughput:\s*([\d.]+)")

KINDS = tuple(k.value for k in Kind)


@dataclass
class Loop:
    label: str
    body: list[str]  # instructions only
    fmla: int  # vector multiply-add instructions (fmla .4s, or sdot .4s in int8 kernels)
    blocks: int = 1  # basic blocks in the loop body (more than one: an approximation, see below)
    rthroughput: dict[str, float] = field(default_factory=dict)  # cpu -> llvm-mca Block RThroughput
    other: dict[str, float] = field(default_factory=dict)  # cpu -> the same without the fmla
    macs: int = 0  # multiply-adds per iteration


@dataclass
class Kernel:
    name: str
    loops: list[Loop] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# compile


def compile_assembly(model: str, workdir: Path, int8: bool = False, cpu: str = "cortex-a76") -> tuple[str, dict[str, str]]:
    """The model's AArch64 assembly for ``cpu``'s preset, and {kernel name: default schedule} from
    the pipeline; ``int8``: of the model quantised by ``mobilec quantize`` (4 random calibration
    inputs)."""
    from mobilec.compiler.importer import import_onnx
    from mobilec.compiler.pipeline import PipelineOptions, build
    from mobilec.targets import resolve
    from mobilec.frontends import export_model
    from mobilec.frontends.quantize import QuantizeConfig, quantize_model

    onnx_path = Path(model) if model.endswith(".onnx") else workdir / f"{model}.onnx"
    if not model.endswith(".onnx"):
        export_model(model, onnx_path)
    if int8:
        onnx_path = quantize_model(onnx_path, workdir / f"{model}-int8.onnx", QuantizeConfig(random=4, held_out=1)).path
    target = resolve("aarch64-linux-gnu", cpu, 4).tvm_target()
    opts = PipelineOptions()
    ex = build(import_onnx(onnx_path, {}).mod, target, opts)
    for module in _modules(ex.mod):
        try:
            asm = module.inspect_source("asm")
        except Exception:  # noqa: BLE001 - modules without assembly (the VM bytecode) raise
            continue
        if asm and ".type" in asm:
            return asm, dict(opts.default_kernels)
    raise RuntimeError("no module of the compiled executable has AArch64 assembly")


def _modules(module):
    yield module
    for imported in module.imports:
        yield from _modules(imported)


# ---------------------------------------------------------------------------------------------
# assembly parsing


def kernel_of(symbol: str) -> str:
    """``__tvm_ffi_K`` (the packed-function wrapper) and ``K_compute_`` (its body) are kernel K;
    ``K_prepacked`` is K reading weights its schedule packed at compile time."""
    name = symbol.removeprefix("__tvm_ffi_")
    return name.removesuffix("_compute_").removesuffix("_prepacked")


def split_functions(asm: str) -> dict[str, list[str]]:
    """{kernel: its lines}; a parallel lambda's lines go to the kernel it follows."""
    kernels: dict[str, list[str]] = {}
    current = None
    for line in asm.splitlines():
        m = FUNC_TYPE.match(line)
        if m:
            symbol = m.group(1)
            if not (symbol.startswith(".L__tvm_parallel_lambda") and current):
                current = kernel_of(symbol)
            kernels.setdefault(current, [])
        if current is not None:
            kernels[current].append(line)
    return kernels


def _vector_mac(instr: str) -> bool:
    return bool(VECTOR_FMLA.match(instr) or VECTOR_SDOT.match(instr) or VECTOR_SMULL.match(instr))


def _instruction(line: str) -> str | None:
    """The instruction on ``line`` with comments stripped, or None for directives and blanks."""
    text = line.split("//")[0].strip()
    if not text or text.startswith(".") or LABEL.match(text):
        return None
    return re.sub(r"\s+", " ", text)


def innermost_loops(lines: list[str]) -> list[Loop]:
    """Innermost loops: a conditional branch back to an earlier ``.LBB`` label with no other
    backward branch between them that lands inside that span. Most are one basic block (no label
    inside). A loop whose body branches (the depthwise kernels' padding checks) is kept as a
    multi-block loop: its blocks are fed to llvm-mca as straight-line code, both sides of each
    branch included, so it is an approximation. Overlapping candidates: the shortest is kept.
    Only ``.LBB`` labels count (``.Ltmp`` debug labels are not branch targets)."""
    entries: list[tuple[str, str]] = []  # ("label", name) or ("instr", text)
    for line in lines:
        m = LABEL.match(line.strip())
        if m:
            if m.group(1).startswith(".LBB"):
                entries.append(("label", m.group(1)))
            continue
        instr = _instruction(line)
        if instr is not None:
            entries.append(("instr", instr))
    where = {text: i for i, (kind, text) in enumerate(entries) if kind == "label"}
    backward = []  # (label index, branch index)
    for j, (kind, text) in enumerate(entries):
        m = BRANCH.match(text) if kind == "instr" else None
        if m and where.get(m.group(1), j) < j:
            backward.append((where[m.group(1)], j))
    candidates = [(i, j) for i, j in backward
                  if not any(i <= a and b < j and (a, b) != (i, j) for a, b in backward)]
    loops: list[Loop] = []
    taken: list[tuple[int, int]] = []
    for i, j in sorted(candidates, key=lambda ij: ij[1] - ij[0]):
        if any(i <= b and a <= j for a, b in taken):
            continue
        taken.append((i, j))
        body = [text for kind, text in entries[i + 1:j + 1] if kind == "instr"]
        blocks = 1 + sum(1 for kind, _ in entries[i + 1:j] if kind == "label")
        loops.append(Loop(entries[i][1], body, sum(1 for x in body if _vector_mac(x)), blocks=blocks,
                          macs=sum(MACS[p] for x in body for p in MACS if p.match(x))))
    return loops


# ---------------------------------------------------------------------------------------------
# llvm-mca


def find_mca() -> str:
    for name in ("llvm-mca", "llvm-mca-14"):
        path = shutil.which(name)
        if path:
            return path
    raise SystemExit("llvm-mca not found (apt-get install llvm-14)")


def mca_version(mca: str) -> str:
    out = subprocess.run([mca, "--version"], capture_output=True, text=True).stdout
    m = re.search(r"LLVM version ([\d.]+)", out)
    return f"llvm-mca, LLVM {m.group(1)}" if m else "llvm-mca"


def block_rthroughput(mca: str, cpu: str, body: list[str]) -> float:
    """Cycles per iteration in steady state, as llvm-mca's scheduling model for ``cpu`` sees it."""
    out = subprocess.run([mca, "-mtriple=aarch64", f"-mcpu={AARCH64[cpu].llvm_mca_cpu}", f"-iterations={ITERATIONS}"],
                         input="\n".join(body) + "\n", capture_output=True, text=True, check=True).stdout
    m = RTHROUGHPUT.search(out)
    if not m:
        raise RuntimeError(f"no Block RThroughput in llvm-mca output for {cpu}")
    return float(m.group(1))


def model_fma_peak(mca: str, cpu: str) -> float:
    """128-bit fmla per cycle that llvm-mca's model for ``cpu`` allows (16 independent fmla)."""
    body = [f"fmla v{i}.4s, v30.4s, v31.s[0]" for i in range(16)]
    return 16 / block_rthroughput(mca, cpu, body)


# ---------------------------------------------------------------------------------------------
# report


def kind_of(name: str, schedules: dict) -> str:
    """The kernel's kind, as the pipeline's classifier reported it (``defaults.Scheduled``); "other"
    for a function the default schedules did not see."""
    return schedules[name].kind if name in schedules else "other"


def raw_utilisation(loop: Loop, cpu: str) -> float:
    """vector fmla / (Block RThroughput * hardware FMA pipes), the model's cycles as they are."""
    return loop.fmla / (loop.rthroughput[cpu] * FMA_PIPES[cpu])


def utilisation(loop: Loop, cpu: str) -> float:
    """The same with the model's fmla throughput replaced by the hardware's: cycles per iteration
    = max(every other resource's bound, from llvm-mca on the body without its fmla; fmla / pipes).
    Block RThroughput is a resource bound (it ignores dependencies), so the two combine by max."""
    pipes = FMA_PIPES[cpu]
    return loop.fmla / (max(loop.other[cpu], loop.fmla / pipes) * pipes)


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def table(kernels: list[Kernel], schedules: dict[str, str], peaks: dict[str, float]) -> tuple[str, bool]:
    groups: dict[str, list[Kernel]] = {}
    for k in kernels:
        groups.setdefault(kind_of(k.name, schedules), []).append(k)
    header = ["kind", "kernels", "inner loops", "of which multi-block"]
    for cpu in CORES:
        short = cpu.removeprefix("cortex-").upper()
        header += [f"{short} median", f"{short} min", f"{short} raw median (model {peaks[cpu]:g} fmla/cyc)"]
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    goal_met = None
    order = sorted(groups, key=lambda k: (KINDS.index(k) if k in KINDS else len(KINDS), k))
    for kind in order:
        ks = groups[kind]
        loops = [lp for k in ks for lp in k.loops]
        row = [kind, str(len(ks)), str(len(loops)), str(sum(1 for lp in loops if lp.blocks > 1))]
        for cpu in CORES:
            u = [utilisation(lp, cpu) for lp in loops]
            raw = [raw_utilisation(lp, cpu) for lp in loops]
            row += [_pct(statistics.median(u)), _pct(min(u)), _pct(statistics.median(raw))] if u else ["-"] * 3
            if kind == "pointwise" and u:
                goal_met = (goal_met is not False) and min(u) >= GOAL
        rows.append("| " + " | ".join(row) + " |")
    return "\n".join(rows), bool(goal_met)


def analyse(mca: str, asm: str, schedules: dict[str, str]) -> list[Kernel]:
    """Every kernel with its innermost multiply-add loops, each timed by llvm-mca on both cores."""
    kernels = []
    for name, lines in split_functions(asm).items():
        loops = [lp for lp in innermost_loops(lines) if lp.fmla]
        for lp in loops:
            rest = [i for i in lp.body if not _vector_mac(i)]
            lp.rthroughput = {cpu: block_rthroughput(mca, cpu, lp.body) for cpu in CORES}
            lp.other = {cpu: block_rthroughput(mca, cpu, rest) for cpu in CORES}
        if loops or name in schedules:
            kernels.append(Kernel(name, loops))
    return kernels


def macs_per_cycle(loop: Loop, cpu: str) -> float:
    """Multiply-adds per cycle of a loop: its fmla or sdot issue on the FMA pipes (A76: two 128-bit
    pipes, both do sdot; A55: one), the rest as llvm-mca bounds it."""
    return loop.macs / max(loop.other[cpu], loop.fmla / FMA_PIPES[cpu])


def int8_table(fp32: list[Kernel], fp32_schedules: dict, int8: list[Kernel], int8_schedules: dict) -> str:
    """Pointwise inner loops, multiply-adds per cycle: fp32 (fmla) against int8 (sdot)."""
    rows = ["| core | fp32 pointwise MACs/cycle (median) | int8 pointwise MACs/cycle (median) | int8 / fp32 |",
            "|---|---:|---:|---:|"]
    for cpu in CORES:
        f = [macs_per_cycle(lp, cpu) for k in fp32 if kind_of(k.name, fp32_schedules) == "pointwise" for lp in k.loops]
        q = [macs_per_cycle(lp, cpu) for k in int8 if kind_of(k.name, int8_schedules) == "pointwise"
             for lp in k.loops if any(VECTOR_SDOT.match(i) for i in lp.body)]
        if f and q:
            fm, qm = statistics.median(f), statistics.median(q)
            rows.append(f"| {cpu} | {fm:.1f} | {qm:.1f} ({len(q)} loops) | {qm / fm:.2f}x |")
    return "\n".join(rows)


def widening_table(mca: str, model: str, workdir: Path) -> str:
    """Cores without the dot product: pointwise multiply-adds per cycle of the fp32 (fmla) and the
    int8 (smull/smlal/sadalp) inner loops, each compiled for the core's preset and timed by
    llvm-mca's own model of that core (Block RThroughput of the whole loop)."""
    rows = ["| core (llvm-mca model) | fp32 pointwise MACs/cycle (median) | int8 pointwise MACs/cycle (median) "
            "| int8 / fp32 |", "|---|---:|---:|---:|"]
    for cpu in WIDENING_CORES:
        medians = []
        for int8 in (False, True):
            asm, schedules = compile_assembly(model, workdir, int8=int8, cpu=cpu)
            loops = [lp for name, lines in split_functions(asm).items() if kind_of(name, schedules) == "pointwise"
                     for lp in innermost_loops(lines) if lp.fmla  # int8: the smull loops, not the epilogues' fmla
                     and (not int8 or any(VECTOR_SMULL.match(i) for i in lp.body))]
            rates = [lp.macs / block_rthroughput(mca, cpu, lp.body) for lp in loops]
            medians.append((statistics.median(rates), len(rates)) if rates else (float("nan"), 0))
        (f, nf), (q, nq) = medians
        rows.append(f"| {cpu} | {f:.1f} ({nf} loops) | {q:.1f} ({nq} loops) | {q / f:.2f}x |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--int8", action="store_true", help="also the model quantised by mobilec quantize: "
                    "pointwise multiply-adds per cycle, fp32 (fmla) against int8 (sdot on A76/A55, "
                    "smull/smlal/sadalp on A53/A72)")
    ap.add_argument("--model", default="mobilenet_v3_large",
                    help="a registered model, or any ONNX file (e.g. one of benchmarks/zoo.py's)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "neon_estimate.md"))
    args = ap.parse_args()
    start = time.perf_counter()
    mca = find_mca()

    with tempfile.TemporaryDirectory() as tmp:
        asm, schedules = compile_assembly(args.model, Path(tmp))
        quantised = compile_assembly(args.model, Path(tmp), int8=True) if args.int8 else None
        widening = widening_table(mca, args.model, Path(tmp)) if args.int8 else None
    compiled = time.perf_counter() - start

    peaks = {cpu: model_fma_peak(mca, cpu) for cpu in CORES}
    kernels = analyse(mca, asm, schedules)
    no_loop = sorted(k.name for k in kernels if not k.loops)

    body, goal_met = table(kernels, schedules, peaks)
    title = (f"# NEON FMA utilisation estimate: {Path(args.model).stem}, aarch64, untuned (default schedules)\n\n"
             "A static, compute-only estimate of the innermost loops' steady state ("
             f"{mca_version(mca)}, -iterations={ITERATIONS}): no memory stalls, no loop overheads "
             "outside the innermost loop; not a latency.\n\n"
             "Utilisation = vector fmla per iteration / (cycles per iteration x FMA pipes), with the "
             f"cores' 128-bit FMA pipes ({', '.join(f'{c}: {p}' for c, p in FMA_PIPES.items())}). "
             "median/min: cycles = max(llvm-mca's Block RThroughput of the loop without its fmla, "
             "fmla / pipes), because LLVM 14's models get the fmla rate wrong (cortex-a76 runs on the "
             "Cortex-A57 model, one 128-bit fmla per cycle; its Cortex-A55 model allows two). "
             "raw: cycles = llvm-mca's Block RThroughput of the whole loop as the model has it "
             "(can exceed 100% on A55, understates A76).\n")
    title += ("\nMulti-block loops (a branch inside the body, e.g. the depthwise kernels' padding checks) "
              "are fed to llvm-mca as straight-line code with both sides of every branch: a rougher estimate.\n")
    verdict = (f"Goal (pointwise inner loops >= {_pct(GOAL)} FMA utilisation on both cores, "
               f"median/min columns): {'met' if goal_met else 'NOT met'}.")
    notes = (f"Kernels without a vector-fmla innermost loop (counted in 'kernels', 0 loops): "
             f"{', '.join(no_loop) if no_loop else 'none'}.")
    short = [f"{k.name} ({schedules[k.name].how if k.name in schedules else '?'}): " + ", ".join(f"{c} {_pct(utilisation(lp, c))}" for c in CORES)
             for k in kernels if kind_of(k.name, schedules) == "pointwise" for lp in k.loops
             if min(utilisation(lp, c) for c in CORES) < GOAL]
    if short:
        notes += "\n\nPointwise inner loops under the goal:\n" + "\n".join(f"- {line}" for line in short)
    text = f"{title}\n{body}\n\n{verdict}\n\n{notes}\n"
    if quantised is not None:
        text += ("\n## int8 (the model quantised by `mobilec quantize`): pointwise multiply-adds per cycle\n\n"
                 "sdot issues on the same pipes as fmla (A76: two, A55: one) and does 16 multiply-adds to "
                 "fmla's 4; LLVM 14's models take it for an integer ALU op, so, as above, the dot-product "
                 "bound is the hardware's and the rest llvm-mca's.\n\n"
                 + int8_table(kernels, schedules, analyse(mca, *quantised), quantised[1]) + "\n")
        text += ("\n## int8 without the dot product (Cortex-A72): pointwise multiply-adds per cycle\n\n"
                 "Each core's own preset and llvm-mca's own model of it, fp32 (fmla) against int8 (smull and "
                 "smlal, 8 products each into int16, then sadalp into int32: 16 multiply-adds in 3 "
                 "instructions).\n\n" + widening + "\n")
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"wrote {out} (compile {compiled:.0f} s, total {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
