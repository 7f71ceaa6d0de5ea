"""Target presets: `--target host` follows the CPU this machine really has; bad values are refused."""

import platform

import pytest

from mobilec.compiler import TargetError, resolve
from mobilec.targets import CPUS, host_cpu, missing_flags

pytestmark = pytest.mark.structure

X86_BASE = "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ht"


def cpuinfo(tmp_path, text: str):
    path = tmp_path / "cpuinfo"
    path.write_text(text)
    return path


@pytest.mark.parametrize("flags, preset", [
    (X86_BASE + " ssse3 sse4_1 sse4_2 popcnt", "x86-64"),               # no AVX2: no AVX2 code
    (X86_BASE + " sse4_2 avx avx2 fma bmi2", "core-avx2"),
    (X86_BASE + " sse4_2 avx avx2 fma avx512f avx512bw avx512vl avx512dq avx512cd", "skylake-avx512"),
    (X86_BASE + " sse4_2 avx avx2 fma avx512f avx512bw avx512vl avx512dq avx512cd avx512_vnni", "cascadelake"),
    (X86_BASE + " sse4_2 avx avx2 fma avx_vnni", "avx2-vnni"),          # AVX-VNNI without AVX-512: its int8 dot
    (X86_BASE + " sse4_2 avx avx2 fma avx512f avx512bw avx512vl avx512dq avx512cd avx512_vnni avx_vnni",
     "cascadelake"),                                                   # both VNNIs (Sapphire Rapids)
    (X86_BASE + " sse4_2 avx avx2 fma avx512f", "core-avx2"),           # partial AVX-512: not enough
])
def test_x86_host_maps_to_the_highest_isa_level_it_has(tmp_path, flags, preset):
    info = cpuinfo(tmp_path, f"processor\t: 0\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
    assert host_cpu("x86_64", info) == preset


@pytest.mark.parametrize("arch, name", sorted(CPUS))
def test_a_target_names_the_preset_it_was_made_from(arch, name):
    """``preset_of`` reads a target back to its preset, also where two presets share an LLVM CPU
    and differ by features (avx2-vnni: core-avx2 plus +avxvnni)."""
    from mobilec.targets import TRIPLES, preset_of

    triple = next(t for t, p in TRIPLES.items() if p.arch == arch)
    assert preset_of(resolve(triple, name).target) is CPUS[(arch, name)]


def test_arm_host_maps_to_its_big_core(tmp_path):
    # a big.LITTLE phone: four A55 (0xd05) and four A76 (0xd0b): code for the big cores
    parts = ["0xd05"] * 4 + ["0xd0b"] * 4
    info = cpuinfo(tmp_path, "".join(f"processor\t: {i}\nCPU part\t: {p}\n\n" for i, p in enumerate(parts)))
    assert host_cpu("aarch64", info) == "cortex-a76"
    assert host_cpu("aarch64", cpuinfo(tmp_path, "CPU part\t: 0xd03\n")) == "cortex-a53"
    assert host_cpu("aarch64", cpuinfo(tmp_path, "CPU part\t: 0xfff\n")) is None  # unknown: triple default
    assert host_cpu("aarch64", tmp_path / "missing") is None


def test_missing_flags_names_what_the_code_needs(tmp_path):
    info = cpuinfo(tmp_path, f"flags\t: {X86_BASE} avx2 fma\n")
    assert missing_flags(CPUS[("x86_64", "skylake-avx512")], info)[0] == "avx512f"
    assert missing_flags(CPUS[("x86_64", "core-avx2")], info) == []


@pytest.mark.skipif(platform.machine() != "x86_64", reason="reads this x86_64 host's /proc/cpuinfo")
def test_host_target_is_what_this_cpu_runs():
    flags = open("/proc/cpuinfo").read()
    r = resolve("host")
    assert r.target["mcpu"] == host_cpu("x86_64")
    assert set(r.needs) <= set(flags.split()), "host code must run on the host"
    if " avx2" not in flags:
        assert r.target["mcpu"] == "x86-64"


@pytest.mark.skipif(platform.machine() != "x86_64" or " avx512f" in open("/proc/cpuinfo").read(),
                    reason="needs an x86_64 host without AVX-512")
def test_host_with_a_cpu_it_cannot_run_is_refused():
    with pytest.raises(TargetError, match="avx512f.*illegal instruction.*--target x86_64-linux-gnu"):
        resolve("host", cpu="skylake-avx512")
    assert resolve("x86_64-linux-gnu", cpu="skylake-avx512").target["mcpu"] == "skylake-avx512"  # cross is fine


@pytest.mark.parametrize("bad", [0, -3])
def test_num_cores_must_be_positive(bad):
    with pytest.raises(TargetError, match=f"--num-cores {bad}: must be 1 or more"):
        resolve("host", num_cores=bad)


def test_default_cores_follow_the_process_affinity():
    import os

    assert resolve("host").target["num-cores"] == len(os.sched_getaffinity(0))
