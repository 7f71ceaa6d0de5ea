"""An emulated aarch64 Linux device: an arm64 Debian root filesystem with Python and TVM's runtime,
running TVM's RPC server under qemu user-mode emulation, registered at a tracker like a board.

Built once and cached (``$MOBILEC_CACHE`` or ``~/.cache/mobilec``): debootstrap (foreign, then the
second stage under emulation, ~10 min), then the aarch64 ``apache-tvm`` wheels downloaded by the
host's pip and installed into a venv inside it. Needs root (chroot), Debian's ``debootstrap`` and
``qemu-user-static``, and binfmt_misc. Timings under emulation say nothing about a phone: use it
for correctness and for exercising RPC and tuning.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from mobilec.rpc.client import RPCError

WHEELS = ("apache-tvm==0.27.0.post1", "apache-tvm-ffi==0.1.14.post1", "psutil", "cloudpickle")
PYTHON_IN_ROOTFS = "3.11"  # bookworm's python3
SERVER_LIB = f"/opt/venv/lib/python{PYTHON_IN_ROOTFS}/site-packages/tvm/lib/libtvm_runtime_extra.so"
READY = ".mobilec-ready"


class EmulatorError(RPCError):
    pass


@dataclass(frozen=True)
class EmulatorConfig:
    arch: str = "aarch64"
    cache: Optional[str] = None
    suite: str = "bookworm"
    mirror: str = "http://deb.debian.org/debian"

    @property
    def rootfs(self) -> Path:
        base = Path(self.cache or os.environ.get("MOBILEC_CACHE") or Path.home() / ".cache" / "mobilec")
        return base / "emulator" / f"{self.arch}-{self.suite}"


def _run(cmd: list[str], what: str, log: Path) -> None:
    print(f"  {what}", flush=True)
    with open(log, "a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise EmulatorError(f"{what} failed (exit {proc.returncode}); see {log}")


def check_host() -> None:
    """Everything emulation needs from the host, or an error saying what is missing."""
    missing = [pkg for cmd, pkg in (("debootstrap", "debootstrap"), ("qemu-aarch64-static", "qemu-user-static"),
                                    ("chroot", "coreutils")) if not shutil.which(cmd)]
    if missing:
        raise EmulatorError(f"the emulated device needs the Debian packages {', '.join(missing)} "
                            f"(apt-get install {' '.join(missing)})")
    if os.geteuid() != 0:
        raise EmulatorError("the emulated device needs root (debootstrap and chroot); run as root, e.g. in CI")
    ensure_binfmt()


def ensure_binfmt() -> None:
    reg = Path("/proc/sys/fs/binfmt_misc")
    if not (reg / "register").exists():
        subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(reg)], capture_output=True)
    if not (reg / "register").exists():
        raise EmulatorError("binfmt_misc is not available (cannot mount /proc/sys/fs/binfmt_misc): this machine "
                            "cannot run aarch64 binaries transparently")
    if not (reg / "qemu-aarch64").exists():
        conf = Path("/usr/lib/binfmt.d/qemu-aarch64.conf")
        if not conf.exists():
            raise EmulatorError(f"{conf} missing: install qemu-user-static")
        try:
            (reg / "register").write_text(conf.read_text().strip())
        except OSError as e:
            raise EmulatorError(f"cannot register qemu-aarch64 with binfmt_misc: {e}") from None


def build_rootfs(cfg: EmulatorConfig = EmulatorConfig()) -> Path:
    """Build (once) and return the root filesystem of the emulated device."""
    if cfg.arch != "aarch64":
        raise EmulatorError(f"--arch {cfg.arch}: only aarch64 is emulated")
    check_host()
    root = cfg.rootfs
    if (root / READY).exists():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    log = root.parent / f"{root.name}.log"
    print(f"building the emulated {cfg.arch} device in {root} (once; ~10-15 min; log {log})", flush=True)
    if not (root / "usr/bin/python3").exists():
        shutil.rmtree(root, ignore_errors=True)
        _run(["debootstrap", "--arch=arm64", "--foreign", "--variant=minbase",
              "--include=python3,python3-venv,python3-pip,ca-certificates", cfg.suite, str(root), cfg.mirror],
             "debootstrap, first stage", log)
        _run(["chroot", str(root), "/debootstrap/debootstrap", "--second-stage"],
             "debootstrap, second stage (under emulation)", log)
    wheels = root / "opt" / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    _run([sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "--platform", "manylinux_2_28_aarch64",
          "--platform", "manylinux2014_aarch64", "--python-version", PYTHON_IN_ROOTFS, "--implementation", "cp",
          "--abi", f"cp{PYTHON_IN_ROOTFS.replace('.', '')}", "-d", str(wheels), *WHEELS],
         "downloading the aarch64 TVM wheels", log)
    _run(["chroot", str(root), "python3", "-m", "venv", "/opt/venv"], "creating the device's venv", log)
    _run(["chroot", str(root), "/opt/venv/bin/pip", "install", "-q", "--no-index", "--find-links", "/opt/wheels",
          *WHEELS], "installing TVM on the device (under emulation)", log)
    (root / READY).write_text("ok\n")
    return root


def server_command(cfg: EmulatorConfig, tracker: str, key: str, port: int = 9090) -> list[str]:
    """TVM's RPC server inside the root filesystem, registered at ``tracker`` under ``key``."""
    root = cfg.rootfs
    if not (root / READY).exists():
        raise EmulatorError(f"no emulated device at {root}: build it with `mobilec rpc emulate --build-only`")
    return ["chroot", str(root), "env", "TVM_USE_RUNTIME_LIB=1", "HOME=/tmp",
            "/opt/venv/bin/python", "-m", "tvm.exec.rpc_server", "--host", "127.0.0.1", "--port", str(port),
            "--port-end", str(port + 100), "--tracker", tracker, "--key", key, "--load-library", SERVER_LIB]


def device(tracker: str, key: str, cfg: EmulatorConfig = EmulatorConfig(), timeout: float = 300.0):
    """Context manager: the emulated device registered at ``tracker`` (built first if needed)."""
    from mobilec.rpc import local

    build_rootfs(cfg)
    return local.server(tracker, key, command=server_command(cfg, tracker, key, port=local.free_port()),
                        timeout=timeout)
