"""The manifest written beside every compiled library (``model.json`` next to ``model.so``), and the
ELF facts used to check a library against it. Shared by the compiler (writer) and the runtime
(reader); imports nothing heavy."""

from __future__ import annotations

import hashlib
import json
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mobilec.errors import UserError

SCHEMA = 1

# e_machine -> architecture, as ``platform.machine()`` names the machines that can run it
ELF_MACHINES = {62: "x86_64", 183: "aarch64", 40: "arm", 3: "x86"}
RUNS_ON = {"x86_64": {"x86_64"}, "aarch64": {"aarch64", "arm64"}, "arm": {"armv7l", "armv8l", "aarch64"}}


class ManifestError(UserError, ValueError):
    pass


@dataclass
class Manifest:
    mobilec_version: str
    triple: str
    cpu: str
    target: dict
    inputs: list[dict]   # {"name", "shape", "dtype"}
    outputs: list[dict]
    library: str         # file name of the .so, relative to the manifest
    sha256: str
    source: str = ""
    fusion: dict = field(default_factory=dict)
    tuning_db: str | None = None
    tuned_kernels: int = 0
    default_schedules: dict = field(default_factory=dict)  # kind -> kernels; "unscheduled": names
    task: str = "classification"
    cpu_needs: list[str] = field(default_factory=list)  # /proc/cpuinfo flags the code needs (x86 ISA level)
    schema: int = SCHEMA

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "Manifest":
        path = Path(path)
        if not path.is_file():
            raise ManifestError(f"{path}: manifest not found; every library compiled by mobilec has its "
                                f"manifest beside it (recompile with `mobilec compile`)")
        try:
            data = json.loads(path.read_text())
            return cls(**data)
        except (json.JSONDecodeError, TypeError) as e:
            raise ManifestError(f"{path}: not a mobilec manifest ({e})") from None


def manifest_path(library: str | Path) -> Path:
    return Path(library).with_suffix(".json")


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def elf_header(path: str | Path) -> tuple[int, int]:
    """(EI_CLASS, e_machine) of an ELF file."""
    with open(path, "rb") as f:
        head = f.read(20)
    if len(head) < 20 or head[:4] != b"\x7fELF":
        raise ManifestError(f"{path}: not an ELF shared library")
    order = "little" if head[5] == 1 else "big"
    return head[4], int.from_bytes(head[18:20], order)


def elf_arch(path: str | Path) -> str:
    _, machine = elf_header(path)
    return ELF_MACHINES.get(machine, f"e_machine {machine}")


def can_run_here(path: str | Path) -> tuple[bool, str, str]:
    arch, here = elf_arch(path), platform.machine()
    return here in RUNS_ON.get(arch, {arch}), arch, here


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


def elf_arch_of(data: bytes) -> str:
    """The architecture of an ELF image held in memory (as ``elf_arch`` names it)."""
    order = "little" if data[5:6] == b"\x01" else "big"
    machine = int.from_bytes(data[18:20], order)
    return ELF_MACHINES.get(machine, f"e_machine {machine}")


def check_library_bytes(path: str | Path, data: bytes) -> None:
    """Refuse what is not a shared library before hashing it: an ONNX model given by mistake is
    named as one, with the command that makes a library of it."""
    if len(data) >= 20 and data[:4] == b"\x7fELF":
        return
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        raise ManifestError(f"{path}: an ONNX model, not a compiled library; compile it first: "
                            f"`mobilec compile {path} -o {path.with_suffix('.so')}`")
    raise ManifestError(f"{path}: not a compiled library (not an ELF shared library); give the .so "
                        f"written by `mobilec compile`")


def article(word: str) -> str:
    """"a" or "an" before an architecture name as it is read aloud: an aarch64, an x86_64, a riscv64."""
    return "an" if word[:1].lower() in "aeiox" else "a"
