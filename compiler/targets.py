"""Target presets: one table keyed by target triple, one table of CPU presets, and the one place
cross compilers are looked up."""

from __future__ import annotations

import os
import platform
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from mobilec.errors import UserError
from mobilec.runtime.manifest import article, missing_cpu_flags, read_cpuinfo


class TargetError(UserError, ValueError):
    pass


@dataclass(frozen=True)
class TriplePreset:
    triple: str
    arch: str                # "aarch64", "armv7", "x86_64": which --cpu presets apply
    mtriple: str
    mattr: tuple[str, ...]
    default_cpu: str
    elf_machine: int         # e_machine in the ELF header of the built library
    elf_class: int           # 1: 32-bit, 2: 64-bit
    compiler: tuple[str, ...]  # candidate C++ drivers, first found wins
    provides: str            # what installs the compiler, for error messages
    extra: dict = field(default_factory=dict)


TRIPLES: dict[str, TriplePreset] = {p.triple: p for p in [
    TriplePreset("aarch64-linux-android", "aarch64", "aarch64-linux-android", ("+neon",), "cortex-a76",
                 183, 2, ("$TVM_NDK_CC", "$ANDROID_NDK_HOME/toolchains/llvm/prebuilt/linux-x86_64/bin/"
                          "aarch64-linux-android28-clang++"),
                 "the Android NDK: set ANDROID_NDK_HOME to its root, or TVM_NDK_CC to its aarch64 clang++"),
    TriplePreset("aarch64-linux-gnu", "aarch64", "aarch64-linux-gnu", ("+neon",), "cortex-a72",
                 183, 2, ("aarch64-linux-gnu-g++",), "Debian/Ubuntu package g++-aarch64-linux-gnu"),
    TriplePreset("armv7a-linux-gnueabihf", "armv7", "armv7a-linux-gnueabihf", ("+neon", "+vfp4"), "cortex-a53",
                 40, 1, ("arm-linux-gnueabihf-g++",), "Debian/Ubuntu package g++-arm-linux-gnueabihf",
                 {"mfloat-abi": "hard"}),
    TriplePreset("x86_64-linux-gnu", "x86_64", "x86_64-linux-gnu", (), "core-avx2",
                 62, 2, ("g++", "c++", "clang++"), "a host C++ compiler (Debian package g++)"),
]}


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity), not every core of the machine."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


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
    int_dot: str = ""             # integer dot-product instruction (schedules/kernels/integer.py): vpmaddwd, sdot, vpdpbusd, smull
    l2_kb: int = 256              # L2 cache a core reads from, usual configuration (compiler/quantized.py)

    @property
    def fma_by_lane(self) -> bool:
        """Whether a multiply-add can take one operand from a lane of a vector register (AArch64's
        ``fmla v, v, v.s[i]``; AVX2 has no such form, ARMv7's only for non-fused ``vmla``)."""
        return self.arch == "aarch64"


CPUS: dict[tuple[str, str], CpuPreset] = {(c.arch, c.name): c for c in [
    # phone and board cores (ARMv8.0 little/big, ARMv8.2 with dot product); parts: MIDR part numbers
    # A53: no int_dot. Its smull kernels spill (LLVM unrolls the reduction and hoists the int16
    # products): 0.93x fp32's multiply-adds a cycle in llvm-mca's A53 model (benchmarks/neon_estimate.py)
    CpuPreset("cortex-a53", "aarch64", "cortex-a53", (), 4, parts=(0xD03, 0xD04), l2_kb=512),  # and A35
    CpuPreset("cortex-a55", "aarch64", "cortex-a55", ("+dotprod", "+fullfp16"), 4, parts=(0xD05,),
              int_dot="sdot", l2_kb=128),
    CpuPreset("cortex-a72", "aarch64", "cortex-a72", (), 2, parts=(0xD07, 0xD08), int_dot="smull",
              l2_kb=1024),  # and A57
    CpuPreset("cortex-a73", "aarch64", "cortex-a73", (), 4, parts=(0xD09,), int_dot="smull", l2_kb=1024),
    CpuPreset("cortex-a75", "aarch64", "cortex-a75", ("+dotprod", "+fullfp16"), 4, parts=(0xD0A,),
              int_dot="sdot", l2_kb=256),
    CpuPreset("cortex-a76", "aarch64", "cortex-a76", ("+dotprod", "+fullfp16"), 4, parts=(0xD0B, 0xD0C, 0xD0E),
              int_dot="sdot", l2_kb=256),
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


def preset_of(target) -> Optional[CpuPreset]:
    """The CPU preset a TVM target (or its dict) was made from: its triple's arch, its mcpu and the
    most of its mattr (avx2-vnni is core-avx2 plus +avxvnni); the triple's default CPU when no preset
    has that mcpu; None for a triple mobilec does not know."""
    attrs = target if isinstance(target, dict) else target.attrs
    mtriple, mcpu = str(attrs.get("mtriple", "")), str(attrs.get("mcpu", ""))
    mattr = {str(a) for a in attrs.get("mattr", ())}
    triple = next((p for p in TRIPLES.values() if p.mtriple == mtriple), None)
    if triple is None:
        return None
    fits = [c for c in CPUS.values() if c.arch == triple.arch and c.mcpu == mcpu and set(c.mattr) <= mattr]
    return max(fits, key=lambda c: len(c.mattr), default=CPUS[(triple.arch, triple.default_cpu)])


def host_triple() -> str:
    machine = platform.machine()
    return {"x86_64": "x86_64-linux-gnu", "aarch64": "aarch64-linux-gnu",
            "armv7l": "armv7a-linux-gnueabihf"}.get(machine, machine)


# `--target host` picks by what /proc/cpuinfo says the machine (with its OS or hypervisor) offers:
# an x86 CPU without AVX2 must not get AVX2 code, one with AVX-512 should get it. Only generic ISA
# levels are candidates, so a shipped database (named by preset) applies to every CPU of a level.
HOST_X86 = ("x86-64", "core-avx2", "avx2-vnni", "skylake-avx512", "cascadelake")


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
