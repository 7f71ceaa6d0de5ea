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
from mobilec.targets import arch_of_elf

SCHEMA = 2  # 2: the library carries its own signature (SIGNATURE)
SIGNATURE = "mobilec_signature"  # the library's function returning signature(inputs, outputs) as uint8


def signature(inputs: list[dict], outputs: list[dict]) -> bytes:
    """The inputs' and outputs' names, shapes and dtypes, as the compiler builds them into the
    library and the runtime compares them with the manifest's (which is text anyone can edit)."""
    def norm(infos):
        return [{"name": str(i["name"]), "shape": [int(d) for d in i["shape"]], "dtype": str(i["dtype"])}
                for i in infos]

    return json.dumps({"inputs": norm(inputs), "outputs": norm(outputs)}, sort_keys=True).encode()


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


def _elf_name(machine: int) -> str:
    arch = arch_of_elf(machine)
    return arch.elf_name if arch else f"e_machine {machine}"


def elf_arch(path: str | Path) -> str:
    _, machine = elf_header(path)
    return _elf_name(machine)


def can_run_here(path: str | Path) -> tuple[bool, str, str]:
    _, machine = elf_header(path)
    arch, here = arch_of_elf(machine), platform.machine()
    return (here in arch.runs_on if arch else False), _elf_name(machine), here


def elf_arch_of(data: bytes) -> str:
    """The architecture of an ELF image held in memory (as ``elf_arch`` names it)."""
    order = "little" if data[5:6] == b"\x01" else "big"
    return _elf_name(int.from_bytes(data[18:20], order))


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

