"""Every per-CPU and per-triple fact mobilec uses, in one place: the architectures (ELF machine,
what runs it, whether it is ARM), the target triples (LLVM triple, default CPU, cross compiler),
the CPU presets (vector width and registers, wide vectors, by-lane FMA, integer dot instruction,
FMA pipes, caches, the llvm-mca model), the integer dot instructions' forms, and what the
schedules read of a CPU (``CpuParams``). Also the host's CPU detection and the one place cross
compilers are looked up.

The lowest layer of mobilec: it imports nothing of the compiler, the schedules or the runtime,
and no TVM at import time, so the thin runtime reads it too. Other code reads these fields,
never a CPU's or an instruction's name.
"""

from __future__ import annotations

import os
import platform
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional

from mobilec.errors import UserError


class TargetError(UserError, ValueError):
    pass


def article(word: str) -> str:
    """"a" or "an" before an architecture name as it is read aloud: an aarch64, an x86_64, a riscv64."""
    return "an" if word[:1].lower() in "aeiox" else "a"


# ---- architectures --------------------------------------------------------------------------

@dataclass(frozen=True)
class Arch:
    name: str                 # as the presets name it: "x86_64", "aarch64", "armv7"
    elf_name: str             # as messages about a library's ELF header name it
    elf_machine: int          # e_machine in an ELF header
    elf_class: int            # 1: 32-bit, 2: 64-bit
    runs_on: tuple[str, ...]  # ``platform.machine()`` of the machines that run its code
    arm: bool                 # an ARM core: big.LITTLE, big cores first (runtime/threads.py)


ARCHES: dict[str, Arch] = {a.name: a for a in [
    Arch("x86_64", "x86_64", 62, 2, ("x86_64",), arm=False),
    Arch("aarch64", "aarch64", 183, 2, ("aarch64", "arm64"), arm=True),
    Arch("armv7", "arm", 40, 1, ("armv7l", "armv8l", "aarch64"), arm=True),
    Arch("x86", "x86", 3, 1, ("i386", "i686"), arm=False),  # no triple: named in messages only
]}


def arch_of_elf(machine: int) -> Optional[Arch]:
    """The architecture of an ELF header's e_machine, or None."""
    return next((a for a in ARCHES.values() if a.elf_machine == machine), None)


def is_arm(machine: Optional[str] = None) -> bool:
    """Whether ``machine`` (``platform.machine()``; default: this one) is an ARM core."""
    return (machine or platform.machine()).lower().startswith(("aarch64", "arm"))


# ---- target triples -------------------------------------------------------------------------

@dataclass(frozen=True)
class TriplePreset:
    triple: str
    arch: str                # "aarch64", "armv7", "x86_64": which --cpu presets apply (ARCHES)
    mtriple: str
    mattr: tuple[str, ...]
    default_cpu: str
    compiler: tuple[str, ...]  # candidate C++ drivers, first found wins
    provides: str            # what installs the compiler, for error messages
    extra: dict = field(default_factory=dict)

    @property
    def elf_machine(self) -> int:
        return ARCHES[self.arch].elf_machine

    @property
    def elf_class(self) -> int:
        return ARCHES[self.arch].elf_class


TRIPLES: dict[str, TriplePreset] = {p.triple: p for p in [
    TriplePreset("aarch64-linux-android", "aarch64", "aarch64-linux-android", ("+neon",), "cortex-a76",
                 ("$TVM_NDK_CC", "$ANDROID_NDK_HOME/toolchains/llvm/prebuilt/linux-x86_64/bin/"
                  "aarch64-linux-android28-clang++"),
                 "the Android NDK: set ANDROID_NDK_HOME to its root, or TVM_NDK_CC to its aarch64 clang++"),
    TriplePreset("aarch64-linux-gnu", "aarch64", "aarch64-linux-gnu", ("+neon",), "cortex-a72",
                 ("aarch64-linux-gnu-g++",), "Debian/Ubuntu package g++-aarch64-linux-gnu"),
    TriplePreset("armv7a-linux-gnueabihf", "armv7", "armv7a-linux-gnueabihf", ("+neon", "+vfp4"), "cortex-a53",
                 ("arm-linux-gnueabihf-g++",), "Debian/Ubuntu package g++-arm-linux-gnueabihf",
                 {"mfloat-abi": "hard"}),
    TriplePreset("x86_64-linux-gnu", "x86_64", "x86_64-linux-gnu", (), "core-avx2",
                 ("g++", "c++", "clang++"), "a host C++ compiler (Debian package g++)"),
]}


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity), not every core of the machine."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


# ---- integer dot-product instructions -------------------------------------------------------

@dataclass(frozen=True)
class DotForm:
    """One form of an integer dot-product instruction (schedules/kernels/integer.py builds its
    tensor intrinsic): ``lanes`` int32 sums, each += ``group`` products per step."""
    lanes: int   # int32 lanes of one vector
    group: int   # input channels summed into each lane
    dtype: str   # the weights' type
    fused_add: bool  # accumulates in place (sdot, vpdpbusd); else a separate add, and a register for the product
    data: str = ""  # the input's type, when it is not the weights' (vpdpbusd: uint8)
    steps: int = 1  # groups one intrinsic call takes by element from one input vector (sdot's lane form: 4)
    int16_sums: bool = False  # the products of a lane's ``steps`` groups are summed in int16 first (smull)

    @property
    def depth(self) -> int:
        """Input channels one intrinsic call reduces: the reduction must be a multiple of it."""
        return self.group * self.steps

    @property
    def data_dtype(self) -> str:
        return self.data or self.dtype

    @property
    def what(self) -> str:
        """Its operands, as reports name them: "int16 pairs", "int8 dot", "uint8 x int8 dot"."""
        operands = self.dtype if self.data_dtype == self.dtype else f"{self.data_dtype} x {self.dtype}"
        return f"{operands} {'pairs' if self.group == 2 else 'dot'}"


# instruction -> its forms, widest (then deepest) first: the first a kernel's channels fit is used
INT_DOTS: dict[str, tuple[DotForm, ...]] = {
    # x86 AVX2: 8 int32 lanes += two int16 products; int16 operands (values minus zero points)
    "vpmaddwd": (DotForm(8, 2, "int16", fused_add=False),),
    # AArch64 dot product: 4 lanes += four int8 products; by element over 4 or 2 quads, or the quad form
    "sdot": (DotForm(4, 4, "int8", True, steps=4), DotForm(4, 4, "int8", True, steps=2), DotForm(4, 4, "int8", True)),
    # AArch64 without dot product: smull/smlal into int16 pairs, sadalp into int32
    "smull": (DotForm(4, 2, "int8", False, steps=2, int16_sums=True),),
    # AVX-512 VNNI: 16 (or 8) lanes += four uint8 x int8 products
    "vpdpbusd": (DotForm(16, 4, "int8", True, data="uint8"), DotForm(8, 4, "int8", True, data="uint8")),
    # AVX-VNNI without AVX-512: vpdpbusd's 256-bit form
    "avx-vnni": (DotForm(8, 4, "int8", True, data="uint8"),),
}



def dot_form(name: str, k: int, n: int) -> Optional[DotForm]:
    """The first (widest, then deepest) form of the instruction ``name`` that a reduction over
    ``k`` input channels into ``n`` output channels fits (k a multiple of its depth, n of its
    lanes), or None; None for no instruction ("")."""
    return next((f for f in INT_DOTS.get(name, ()) if k % f.depth == 0 and n % f.lanes == 0), None)


# ---- CPU presets ----------------------------------------------------------------------------

@dataclass(frozen=True)
class CpuPreset:
    name: str
    arch: str
    mcpu: str
    mattr: tuple[str, ...] = ()
    num_cores: int = 4
    needs: tuple[str, ...] = ()   # /proc/cpuinfo flags a machine must show to run the code (x86 ISA levels)
    parts: tuple[int, ...] = ()   # ARM "CPU part" numbers in /proc/cpuinfo that this preset stands for
    vector_bits: int = 128        # SIMD register width the kernels vectorise for (NEON, SSE: 128)
    vector_registers: int = 32    # SIMD registers the register tiles may fill (AArch64: 32, ARMv7: 16 q)
    wide_bits: int = 0            # wider vectors for kernels whose channels fill them (AVX-512: pointwise)
    int_dot: str = ""             # integer dot-product instruction (INT_DOTS); "": none, int8 runs in float32
    l2_kb: int = 256              # L2 cache a core reads from, usual configuration (compiler/quantized.py)
    fma_pipes: int = 0            # 128-bit FMA pipes of the real core (benchmarks/neon_estimate.py); 0: not modelled
    mca_cpu: str = ""             # llvm-mca's -mcpu for this core (benchmarks/neon_estimate.py); "": mcpu

    @property
    def fma_by_lane(self) -> bool:
        """Whether a multiply-add can take one operand from a lane of a vector register (AArch64's
        ``fmla v, v, v.s[i]``; AVX2 has no such form, ARMv7's only for non-fused ``vmla``)."""
        return self.arch == "aarch64"

    @property
    def int16_sums(self) -> bool:
        """Whether its integer kernels sum products in int16 first (a widening multiply, no dot product)."""
        return any(f.int16_sums for f in INT_DOTS.get(self.int_dot, ()))

    @property
    def llvm_mca_cpu(self) -> str:
        return self.mca_cpu or self.mcpu

    def params(self, cores: int) -> "CpuParams":
        """What the schedules read of this CPU, for kernels split over ``cores`` threads."""
        return CpuParams(self.vector_bits // 32, self.vector_registers, cores, self.int_dot, self.fma_by_lane,
                         self.wide_bits // 32, self.l2_kb * 1024)


CPUS: dict[tuple[str, str], CpuPreset] = {(c.arch, c.name): c for c in [
    # phone and board cores (ARMv8.0 little/big, ARMv8.2 with dot product); parts: MIDR part numbers
    # A53: no int_dot. Its smull kernels spill (LLVM unrolls the reduction and hoists the int16
    # products): 0.93x fp32's multiply-adds a cycle in llvm-mca's A53 model (benchmarks/neon_estimate.py)
    CpuPreset("cortex-a53", "aarch64", "cortex-a53", (), 4, parts=(0xD03, 0xD04), l2_kb=512),  # and A35
    # A55: a 64-bit-wide NEON datapath, a 128-bit fmla issues at one per cycle
    CpuPreset("cortex-a55", "aarch64", "cortex-a55", ("+dotprod", "+fullfp16"), 4, parts=(0xD05,),
              int_dot="sdot", l2_kb=128, fma_pipes=1),
    CpuPreset("cortex-a72", "aarch64", "cortex-a72", (), 2, parts=(0xD07, 0xD08), int_dot="smull",
              l2_kb=1024),  # and A57
    CpuPreset("cortex-a73", "aarch64", "cortex-a73", (), 4, parts=(0xD09,), int_dot="smull", l2_kb=1024),
    CpuPreset("cortex-a75", "aarch64", "cortex-a75", ("+dotprod", "+fullfp16"), 4, parts=(0xD0A,),
              int_dot="sdot", l2_kb=256),
    # A76: two 128-bit NEON FP pipes (V0, V1), both able to FMA
    CpuPreset("cortex-a76", "aarch64", "cortex-a76", ("+dotprod", "+fullfp16"), 4, parts=(0xD0B, 0xD0C, 0xD0E),
              int_dot="sdot", l2_kb=256, fma_pipes=2),
    CpuPreset("cortex-a77", "aarch64", "cortex-a77", ("+dotprod", "+fullfp16"), 4, parts=(0xD0D,),
              int_dot="sdot", l2_kb=512),
    CpuPreset("cortex-a78", "aarch64", "cortex-a78", ("+dotprod", "+fullfp16"), 4, parts=(0xD41, 0xD4B),
              int_dot="sdot", l2_kb=512),
    CpuPreset("cortex-x1", "aarch64", "cortex-x1", ("+dotprod", "+fullfp16"), 4, parts=(0xD44, 0xD4C),
              int_dot="sdot", l2_kb=1024),
    CpuPreset("cortex-a53", "armv7", "cortex-a53", (), 4, parts=(0xD03,), vector_registers=16, l2_kb=512),  # 32-bit
    CpuPreset("cortex-a7", "armv7", "cortex-a7", (), 4, parts=(0xC07,), vector_registers=16, l2_kb=512),
    CpuPreset("cortex-a72", "armv7", "cortex-a72", (), 4, parts=(0xD08,), vector_registers=16, l2_kb=1024),
    # x86_64 by ISA level, lowest first: host detection takes the last one whose flags the CPU shows
    CpuPreset("x86-64", "x86_64", "x86-64", (), usable_cores(), vector_registers=16, l2_kb=256),  # SSE2: any x86_64
    CpuPreset("core-avx2", "x86_64", "core-avx2", (), usable_cores(), needs=("avx2", "fma"),
              vector_bits=256, vector_registers=16, int_dot="vpmaddwd", l2_kb=256),
    CpuPreset("znver3", "x86_64", "znver3", (), usable_cores(), needs=("avx2", "fma"),
              vector_bits=256, vector_registers=16, int_dot="vpmaddwd", l2_kb=512),
    CpuPreset("avx2-vnni", "x86_64", "core-avx2", ("+avxvnni",), usable_cores(),  # AVX-VNNI, no AVX-512
              needs=("avx2", "fma", "avx_vnni"), vector_bits=256, vector_registers=16, int_dot="avx-vnni",
              l2_kb=1280),
    CpuPreset("skylake-avx512", "x86_64", "skylake-avx512", (), usable_cores(),
              needs=("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd"),
              vector_bits=256, wide_bits=512, vector_registers=32, int_dot="vpmaddwd", l2_kb=1024),
    CpuPreset("cascadelake", "x86_64", "cascadelake", (), usable_cores(),  # AVX-512 with VNNI
              needs=("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd", "avx512_vnni"),
              vector_bits=256, wide_bits=512, vector_registers=32, int_dot="vpdpbusd", l2_kb=1024),
]}

# a target of a triple mobilec has no presets for: 128-bit vectors, 16 registers, no dot product
GENERIC = CpuPreset("generic", "", "generic", vector_registers=16)


@dataclass(frozen=True)
class CpuParams:
    """What the default schedules and the tuning search read of a CPU (``CpuPreset.params``)."""
    lanes: int       # fp32 lanes in one vector register
    registers: int   # vector registers
    cores: int
    int_dot: str = ""  # the integer dot-product instruction (INT_DOTS; "": none)
    fma_by_lane: bool = False  # multiply-adds by vector element (``CpuPreset.fma_by_lane``)
    wide_lanes: int = 0  # fp32 lanes of the widest vectors, where wider than ``lanes`` (``CpuPreset.wide_bits``)
    l2_bytes: int = 256 * 1024  # the L2 cache a core reads from (``CpuPreset.l2_kb``)

    def for_channels(self, channels: int) -> "CpuParams":
        """These parameters with the widest vectors when they divide ``channels`` (AVX-512's 16
        lanes for a pointwise kernel's 16k output channels), else unchanged."""
        if self.wide_lanes and channels % self.wide_lanes == 0:
            return replace(self, lanes=self.wide_lanes)
        return self


def preset_of(target) -> CpuPreset:
    """The CPU preset a TVM target (or its dict) was made from: its triple's arch, its mcpu and the
    most of its mattr (avx2-vnni is core-avx2 plus +avxvnni); the triple's default CPU when no preset
    has that mcpu; ``GENERIC`` for a target without a triple, or of a triple mobilec does not know."""
    attrs = target if isinstance(target, dict) else target.attrs
    mtriple, mcpu = str(attrs.get("mtriple", "")), str(attrs.get("mcpu", ""))
    mattr = {str(a) for a in attrs.get("mattr", ())}
    triple = next((p for p in TRIPLES.values() if p.mtriple == mtriple), None)
    if triple is None:
        return GENERIC
    fits = [c for c in CPUS.values() if c.arch == triple.arch and c.mcpu == mcpu and set(c.mattr) <= mattr]
    return max(fits, key=lambda c: len(c.mattr), default=CPUS[(triple.arch, triple.default_cpu)])


def cpu_params(target) -> CpuParams:
    """What the schedules read of a TVM target's CPU (or its dict): its preset's ``params`` for the
    target's ``num-cores``."""
    attrs = target if isinstance(target, dict) else target.attrs
    return preset_of(target).params(int(attrs.get("num-cores", 1)))


HOST_TRIPLES = {"x86_64": "x86_64-linux-gnu", "aarch64": "aarch64-linux-gnu", "armv7l": "armv7a-linux-gnueabihf"}


def host_triple() -> str:
    machine = platform.machine()
    return HOST_TRIPLES.get(machine, machine)


# `--target host` picks by what /proc/cpuinfo says the machine (with its OS or hypervisor) offers:
# an x86 CPU without AVX2 must not get AVX2 code, one with AVX-512 should get it. Only generic ISA
# levels are candidates, so a database made on one CPU of a level applies to every CPU of it.
HOST_X86 = ("x86-64", "core-avx2", "avx2-vnni", "skylake-avx512", "cascadelake")


def read_cpuinfo(path: str | Path = "/proc/cpuinfo") -> tuple[set[str], set[int]]:
    """(x86 "flags", ARM "CPU part" numbers) of this machine; empty where unreadable."""
    flags, parts = set(), set()
    try:
        text = Path(path).read_text()
    except OSError:
        return flags, parts
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("flags", "features"):
            flags |= set(value.split())
        elif key == "cpu part":
            try:
                parts.add(int(value.strip(), 16))
            except ValueError:
                pass
    return flags, parts


def missing_cpu_flags(needs, cpuinfo: str | Path = "/proc/cpuinfo") -> list[str]:
    """The flags in ``needs`` this CPU lacks (none when /proc/cpuinfo cannot be read: no guessing)."""
    flags, _ = read_cpuinfo(cpuinfo)
    return [f for f in needs if f not in flags] if flags else []


def host_cpu(arch: str, cpuinfo: str | Path = "/proc/cpuinfo") -> Optional[str]:
    """The CPU preset nearest to this machine's CPU for ``arch``, or None (then the triple's default).
    x86_64: the highest ISA level whose flags are all present. ARM: the biggest core present (the
    runtime runs on the big cores of a big.LITTLE phone), by its MIDR part number."""
    flags, parts = read_cpuinfo(cpuinfo)
    if arch == "x86_64":
        fits = [name for name in HOST_X86 if set(CPUS[(arch, name)].needs) <= flags]
        return fits[-1] if flags and fits else None
    present = [c.name for (a, _), c in CPUS.items() if a == arch and set(c.parts) & parts]
    return present[-1] if present else None  # table order: little cores first


def runnable_here(arch: str = "x86_64", cpuinfo: str | Path = "/proc/cpuinfo") -> list[CpuPreset]:
    """The presets of ``arch`` whose code this machine runs (the flags they need are all here)."""
    if platform.machine() not in ARCHES[arch].runs_on:
        return []
    flags, _ = read_cpuinfo(cpuinfo)
    return [c for (a, _), c in CPUS.items() if a == arch and set(c.needs) <= flags]


def missing_flags(preset: CpuPreset, cpuinfo: str | Path = "/proc/cpuinfo") -> list[str]:
    return missing_cpu_flags(preset.needs, cpuinfo)


@dataclass(frozen=True)
class ResolvedTarget:
    triple: str
    cpu: str
    target: dict  # the TVM target dict (JSON-serialisable)
    preset: TriplePreset
    needs: tuple[str, ...] = ()  # CPU flags the code needs (recorded in the manifest, checked at load)

    def tvm_target(self):
        import tvm

        return tvm.target.Target(self.target)


def resolve(triple: str = "host", cpu: Optional[str] = None, num_cores: Optional[int] = None) -> ResolvedTarget:
    """Turn a triple (or "host") and an optional CPU preset into a TVM target dict."""
    host = triple == "host"
    if host:
        triple = host_triple()
    if triple not in TRIPLES:
        raise TargetError(f"unknown target triple {triple!r}; valid: host, {', '.join(TRIPLES)}")
    if num_cores is not None and num_cores < 1:
        raise TargetError(f"--num-cores {num_cores}: must be 1 or more (the threads the kernels are split for)")
    p = TRIPLES[triple]
    cpu_name = cpu or (host_cpu(p.arch) if host else None) or p.default_cpu
    preset = CPUS.get((p.arch, cpu_name))
    if preset is None:
        valid = sorted(name for arch, name in CPUS if arch == p.arch)
        raise TargetError(f"--cpu {cpu_name!r} is not {article(p.arch)} {p.arch} preset for {triple}; "
                          f"valid: {', '.join(valid)}")
    if host and cpu:
        lacking = missing_flags(preset)
        if lacking:
            raise TargetError(f"--cpu {cpu} needs {', '.join(lacking)}, which this machine's CPU lacks: its code "
                              f"would stop with an illegal instruction here. Leave out --cpu to get "
                              f"{host_cpu(p.arch) or p.default_cpu}, or build for another machine with "
                              f"--target {triple}")
    target = {"kind": "llvm", "mtriple": p.mtriple, "mcpu": preset.mcpu,
              "mattr": list(p.mattr + preset.mattr), "num-cores": num_cores or preset.num_cores, **p.extra}
    if not target["mattr"]:
        del target["mattr"]
    return ResolvedTarget(triple, cpu_name, target, p, preset.needs)


def find_compiler(triple: str) -> str:
    """The C++ driver that links libraries for ``triple``, or an error naming what provides it."""
    p = TRIPLES[triple]
    for candidate in p.compiler:
        path = os.path.expandvars(candidate)
        if "$" in path:
            continue  # the variable is unset
        found = shutil.which(path) or (path if Path(path).is_file() else None)
        if found:
            return found
    raise TargetError(f"no C++ cross compiler for {triple}: install {p.provides}")


def export_function(triple: str) -> Callable:
    """``fcompile`` for ``Executable.export_library``."""
    from tvm.support import cc

    compiler = find_compiler(triple)
    if triple == host_triple():
        return cc.create_shared if Path(compiler).name in ("g++", "c++") else cc.cross_compiler(compiler)
    return cc.cross_compiler(compiler)
