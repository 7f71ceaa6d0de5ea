"""The per-kernel timer (``kernel_timer.cc``) built for a target triple with the compiler that
builds its models, for ``mobilec.runtime.Module.kernel_times(timer=...)``: the Relax VM's
instrument as native code, so kernels are timed inside the whole model on the device itself,
locally or over RPC alike."""

from __future__ import annotations

from pathlib import Path

SOURCE = Path(__file__).with_name("kernel_timer.cc")


def build(triple: str, directory: Path) -> Path:
    """``directory/kernel_timer-TRIPLE.so``, compiled for ``triple`` (once: an existing one is reused)."""
    import tvm_ffi.libinfo
    from tvm.support import cc

    from mobilec.targets import find_compiler

    out = Path(directory) / f"kernel_timer-{triple}.so"
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        # the tvm-ffi symbols it uses resolve against the runtime that loads it, as a model's do
        cc.create_shared(str(out), [str(SOURCE)], options=["-std=c++17", "-O2", "-fPIC",
                                                           f"-I{tvm_ffi.libinfo.find_include_path()}",
                                                           f"-I{tvm_ffi.libinfo.find_dlpack_include_path()}"],
                         cc=find_compiler(triple))
    return out
