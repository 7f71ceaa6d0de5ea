"""The thin runtime: load a library compiled by mobilec and run it, with TVM's runtime library and
numpy only (never torch, onnx or TVM's compiler library).

    import mobilec.runtime as mr
    m = mr.load("model.so")            # checks model.json beside it: sha256, architecture
    probs = m(x)                       # or m.run({"input": x}) -> list of numpy arrays
    m.benchmark(warmup=10, repeat=50)  # {"median_ms", "min_ms", "max_ms"}
    remote = mr.connect(tracker="127.0.0.1:9190", key="rk3399")
    m = remote.load("model.so")        # uploads and runs on the device
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional, Union

import numpy as np

from mobilec.runtime.manifest import Manifest, ManifestError, can_run_here, manifest_path, sha256

__all__ = ["Module", "Remote", "RemoteError", "RuntimeInputError", "ManifestError", "load", "connect"]


def _tvm():
    """Import TVM in runtime-only mode (libtvm_runtime.so) unless the compiler is already loaded."""
    if "tvm" not in sys.modules:
        os.environ.setdefault("TVM_USE_RUNTIME_LIB", "1")
        # tvm_ffi imports torch eagerly when it is installed; the runtime never needs it, so keep it
        # out (ImportError is the "not installed" path tvm_ffi already handles).
        blocked = "torch" not in sys.modules
        if blocked:
            sys.modules["torch"] = None
        try:
            import tvm  # noqa: F401,F811
        finally:
            if blocked:
                del sys.modules["torch"]
    import tvm

    return tvm


class RuntimeInputError(ValueError):
    pass


class RemoteError(RuntimeError):
    """The RPC session to a device failed mid-call (device gone, session timed out)."""


def _verified_manifest(library: Path) -> Manifest:
    if not library.is_file():
        raise FileNotFoundError(f"{library}: no such compiled library")
    manifest = Manifest.load(manifest_path(library))
    digest = sha256(library)
    if digest != manifest.sha256:
        raise ManifestError(f"{library}: sha256 {digest[:12]}… does not match its manifest "
                            f"({manifest.sha256[:12]}…); the library was changed or replaced after compiling")
    return manifest


class Module:
    """A compiled model ready to run: call it, or ``run`` a dict of named inputs."""

    def __init__(self, manifest: Manifest, vm, device, path: Path, remote=None):
        self.manifest, self._vm, self._device, self.path, self._remote = manifest, vm, device, path, remote
        self.inputs = manifest.inputs
        self.outputs = manifest.outputs

    def __repr__(self):
        where = f" on {self._remote}" if self._remote else ""
        ins = ", ".join(f"{i['name']}: {i['dtype']}{i['shape']}" for i in self.inputs)
        return f"<mobilec.runtime.Module {self.path.name} ({self.manifest.triple}){where} inputs {ins}>"

    def _check(self, feeds: dict) -> list:
        tvm = _tvm()
        names = [i["name"] for i in self.inputs]
        extra, missing = sorted(set(feeds) - set(names)), [n for n in names if n not in feeds]
        if extra or missing:
            raise RuntimeInputError(f"inputs {sorted(feeds)} given; the model takes {names}")
        out = []
        for spec in self.inputs:
            x = feeds[spec["name"]]
            if not isinstance(x, np.ndarray):
                raise RuntimeInputError(f"input {spec['name']!r}: expected a numpy array, given {type(x).__name__}")
            want = (spec["dtype"], tuple(spec["shape"]))
            if str(x.dtype) != want[0]:
                raise RuntimeInputError(f"input {spec['name']!r}: expected dtype {want[0]}, given {x.dtype} "
                                        f"(convert with x.astype(np.{want[0]}))")
            if x.ndim != len(want[1]):
                raise RuntimeInputError(f"input {spec['name']!r}: expected rank {len(want[1])} shape {want[1]}, "
                                        f"given rank {x.ndim} shape {x.shape}")
            if tuple(x.shape) != want[1]:
                raise RuntimeInputError(f"input {spec['name']!r}: expected shape {want[1]}, given {x.shape}")
            out.append(tvm.runtime.tensor(np.ascontiguousarray(x), self._device))
        return out

    def _remote_call(self, fn, *args):
        if self._remote is None:
            return fn(*args)
        try:
            return fn(*args)
        except Exception as e:  # TVM raises its own error types for a dropped socket
            raise RemoteError(f"lost the RPC session to {self._remote}: {str(e).splitlines()[0] if str(e) else e!r}; "
                              f"check the device with `mobilec rpc devices`") from None

    def _invoke(self, tensors):
        def call():
            self._vm.set_input("main", *tensors)
            self._vm.invoke_stateful("main")
            return self._vm.get_outputs("main")

        return self._remote_call(call)

    def run(self, feeds: dict) -> list[np.ndarray]:
        result = self._invoke(self._check(feeds))

        def fetch():  # unpacking a remote result talks to the device too
            if hasattr(result, "numpy"):
                return [result.numpy()]
            return [result[i].numpy() for i in range(len(result))]

        return self._remote_call(fetch)

    def __call__(self, *args: np.ndarray):
        names = [i["name"] for i in self.inputs]
        if len(args) != len(names):
            raise RuntimeInputError(f"{len(args)} inputs given; the model takes {len(names)}: {names}")
        outs = self.run(dict(zip(names, args)))
        return outs[0] if len(outs) == 1 else outs

    def benchmark(self, warmup: int = 10, repeat: int = 50, number: int = 1,
                  feeds: Optional[dict] = None) -> dict:
        """Latency in milliseconds (median/min/max over ``repeat`` runs), timed where the model runs."""
        if feeds is None:
            rng = np.random.default_rng(0)
            feeds = {i["name"]: rng.standard_normal(i["shape"]).astype(i["dtype"]) for i in self.inputs}
        def timed():
            tensors = self._check(feeds)
            self._vm.set_input("main", *tensors)
            for _ in range(max(warmup, 0)):
                self._vm.invoke_stateful("main")
            timer = self._vm.time_evaluator("invoke_stateful", self._device, number=number, repeat=repeat)
            return timer("main").results

        ms = np.array(self._remote_call(timed)) * 1e3
        return {"median_ms": float(np.median(ms)), "min_ms": float(ms.min()), "max_ms": float(ms.max()),
                "repeat": repeat}


def load(path: Union[str, Path]) -> Module:
    """Load ``path`` (a .so compiled by mobilec) after checking it against ``path.json``."""
    path = Path(path)
    manifest = _verified_manifest(path)
    ok, arch, here = can_run_here(path)
    if not ok:
        raise ManifestError(f"{path}: built for {arch} ({manifest.triple}); this machine is {here}. "
                            f"Run it on a {arch} device, e.g. mr.connect(tracker=..., key=...).load(path)")
    tvm = _tvm()
    lib = tvm.runtime.load_module(str(path))
    device = tvm.cpu()
    from tvm.runtime.vm import VirtualMachine

    return Module(manifest, VirtualMachine(lib, device), device, path)


class Remote:
    """A device reached through an RPC tracker (or a server directly)."""

    def __init__(self, session, description: str):
        self.session, self.description = session, description

    def __repr__(self):
        return self.description

    def load(self, path: Union[str, Path]) -> Module:
        path = Path(path)
        manifest = _verified_manifest(path)
        self.session.upload(str(path))
        lib = self.session.load_module(path.name)
        device = self.session.cpu()
        from tvm.runtime.vm import VirtualMachine

        return Module(manifest, VirtualMachine(lib, device), device, path, remote=self.description)


def connect(tracker: Optional[str] = None, key: Optional[str] = None, server: Optional[str] = None,
            timeout: float = 60.0, session_timeout: float = 600.0) -> Remote:
    """Open an RPC session: through a tracker (``tracker="host:port", key=...``) or straight to a
    server (``server="host:port"``)."""
    from mobilec.rpc.client import open_session

    session, description = open_session(tracker=tracker, key=key, server=server, timeout=timeout,
                                        session_timeout=session_timeout, tvm=_tvm())
    return Remote(session, description)
