"""The thin runtime: load a library compiled by mobilec and run it, with TVM's runtime library and
numpy only (never torch, onnx or TVM's compiler library).

    import mobilec.runtime as mr
    m = mr.load("model.so")            # checks model.json beside it: sha256, architecture
    probs = m(x)                       # or m.run({"input": x}) -> list of numpy arrays
    m.threads                          # every core this process may run on (big cores on ARM)
    m.benchmark(warmup=10, repeat=50)  # {"median_ms", "min_ms", "max_ms", "threads"}
    remote = mr.connect(tracker="127.0.0.1:9190", key="rk3399")
    m = remote.load("model.so")        # uploads and runs on the device

``load(path, threads=N, cores="big"|"little"|"all")`` chooses the thread pool; inputs holding NaN
or Inf are refused (the kernels' clamps would silently drop NaN) unless ``check_finite=False``,
with which results for non-finite inputs are undefined.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Optional, Union

import numpy as np

from mobilec.errors import ConfigError, UserError
from mobilec.runtime import threads as _threads
from mobilec.runtime.manifest import (SIGNATURE, Manifest, ManifestError, can_run_here, check_library_bytes,
                                      elf_arch_of, manifest_path, signature)
from mobilec.targets import article, missing_cpu_flags

__all__ = ["Module", "Remote", "RemoteError", "RuntimeInputError", "ManifestError", "CompilerUnavailableError",
           "load", "connect", "per_inference_us", "random_feeds"]

_RUNTIME_ONLY_BY_US = False  # set when _tvm() imported TVM with its runtime library only


def _tvm():
    """Import TVM in runtime-only mode (libtvm_runtime.so) unless the compiler is already loaded.
    ``TVM_USE_RUNTIME_LIB`` is set only around the import (TVM reads it once, at import), so child
    processes (``mobilec compile`` run from a script that loaded a model) get the whole of TVM."""
    global _RUNTIME_ONLY_BY_US
    if "tvm" not in sys.modules:
        before = os.environ.get("TVM_USE_RUNTIME_LIB")
        os.environ["TVM_USE_RUNTIME_LIB"] = "1"
        # tvm_ffi imports torch eagerly when it is installed; the runtime never needs it, so keep it
        # out (ImportError is the "not installed" path tvm_ffi already handles).
        blocked = "torch" not in sys.modules
        if blocked:
            sys.modules["torch"] = None
        try:
            import tvm  # noqa: F401,F811
            _RUNTIME_ONLY_BY_US = True
        finally:
            if blocked:
                del sys.modules["torch"]
            if before is None:
                del os.environ["TVM_USE_RUNTIME_LIB"]
            else:
                os.environ["TVM_USE_RUNTIME_LIB"] = before
    import tvm

    return tvm


class CompilerUnavailableError(UserError, ImportError):
    """TVM is loaded in this process with its runtime library only: its compiler cannot be added."""


def ensure_compiler_loadable() -> None:
    """Raise one clear line when TVM was already imported runtime-only in this process (called
    first thing by ``mobilec.compiler``, whose imports would otherwise fail deep inside TVM)."""
    base = sys.modules.get("tvm.base")
    if base is None or not getattr(base, "_RUNTIME_ONLY", False):
        return
    why = ("mobilec.runtime loaded a model first, with TVM's runtime library only" if _RUNTIME_ONLY_BY_US else
           "TVM was imported with its runtime library only (TVM_USE_RUNTIME_LIB=1, or no libtvm_compiler.so)")
    raise CompilerUnavailableError(
        f"cannot import mobilec.compiler: {why}; import mobilec.compiler before loading models, or compile "
        f"in a separate process (e.g. `mobilec compile` in a subprocess)")


class RuntimeInputError(UserError, ValueError):
    pass


class RemoteError(UserError, RuntimeError):
    """The RPC session to a device failed mid-call (device gone, session timed out)."""


def _verified_bytes(library: Path) -> tuple[Manifest, bytes]:
    """The library's bytes, read once, checked to be a shared library and to match its manifest's
    sha256: what is loaded (or uploaded) is exactly what was hashed."""
    if not library.is_file():
        raise FileNotFoundError(f"{library}: no such compiled library")
    data = library.read_bytes()
    check_library_bytes(library, data)  # an ONNX file given by mistake is named as such, not as a mismatch
    manifest = Manifest.load(manifest_path(library))
    digest = hashlib.sha256(data).hexdigest()
    if digest != manifest.sha256:
        raise ManifestError(f"{library}: sha256 {digest[:12]}… does not match its manifest "
                            f"({manifest.sha256[:12]}…); the library was changed or replaced after compiling")
    return manifest, data


def _load_library(path: str):
    """Load a shared library into this process (a seam for tests)."""
    return _tvm().runtime.load_module(path)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[-1] if text else repr(e)


def _nonfinite(name: str, x: np.ndarray) -> Optional[str]:
    """None when every value of ``x`` is finite, else what is wrong (for a float input)."""
    if x.dtype.kind not in "fc" or x.size == 0:
        return None
    bad = ~np.isfinite(x)  # one pass, ~50 us for a 224x224 image: noise beside the model
    if not bad.any():
        return None
    nan, total = int(np.isnan(x).sum()), int(bad.sum())
    first = tuple(int(i) for i in np.unravel_index(int(np.argmax(bad.ravel())), x.shape))
    return (f"input {name!r} holds non-finite values: {nan} NaN, {total - nan} Inf, first at index {first}; mobilec "
            f"refuses them because its kernels would give finite, wrong outputs (ReLU6/h-swish clamps drop "
            f"NaN): clean the input, or load with check_finite=False (results for non-finite inputs are "
            f"undefined)")


def _numpy(result) -> list[np.ndarray]:
    """A VM result (one tensor or a tuple of them) as numpy arrays."""
    if hasattr(result, "numpy"):
        return [result.numpy()]
    return [result[i].numpy() for i in range(len(result))]


class Module:
    """A compiled model ready to run: call it, or ``run`` a dict of named inputs."""

    def __init__(self, manifest: Manifest, vm, device, path: Path, remote=None, threads: int = 1,
                 cpus: Optional[list[int]] = None, check_finite: bool = True, session=None):
        self.manifest, self._vm, self._device, self.path, self._remote = manifest, vm, device, path, remote
        self._session = session       # a remote module's RPC session (to load a timer beside it)
        self._timer = None            # (path, library) of the kernel timer loaded where the model runs
        self.inputs = manifest.inputs
        self.outputs = manifest.outputs
        self.threads = threads        # threads each call runs on (on the device, for a remote module)
        self.cpus = cpus              # the cores they share (None on a remote device: TVM's big cores)
        self.check_finite = check_finite
        self._lock = threading.Lock()  # one call at a time: the VM and the input buffers are shared
        self._buffers = None           # a local module's input tensors, allocated on the first call

    def __repr__(self):
        where = f" on {self._remote}" if self._remote else ""
        ins = ", ".join(f"{i['name']}: {i['dtype']}{i['shape']}" for i in self.inputs)
        return (f"<mobilec.runtime.Module {self.path.name} ({self.manifest.triple}){where}, "
                f"{_threads.plural(self.threads)}, inputs {ins}>")

    def _pool(self) -> None:
        """Size the calling thread's TVM pool for this module (a no-op when it already is)."""
        if self._remote is None:
            self.threads = _threads.configure(_tvm(), self.threads, self.cpus)

    def _check(self, feeds: dict) -> list[np.ndarray]:
        """The inputs in the model's order, each checked against the manifest (numpy only)."""
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
            if self.check_finite and (why := _nonfinite(spec["name"], x)):
                raise RuntimeInputError(why)
            out.append(x)
        return out

    def _to_device(self, arrays: list[np.ndarray]) -> list:
        tvm = _tvm()
        # np.ascontiguousarray makes a 0-d array 1-d; a 0-d array is always contiguous
        return [tvm.runtime.tensor(x if x.flags.c_contiguous else np.ascontiguousarray(x), self._device)
                for x in arrays]

    def _remote_call(self, fn, *args):
        if self._remote is None:
            return fn(*args)
        try:
            return fn(*args)
        except Exception as e:  # TVM raises its own error types for a dropped socket
            raise RemoteError(f"lost the RPC session to {self._remote}: {str(e).splitlines()[0] if str(e) else e!r}; "
                              f"check the device with `mobilec rpc devices`") from None

    def _invoke(self, arrays):
        """The outputs as numpy arrays. Locally the inputs are copied into tensors kept from the
        first call (allocating a fresh 600 KB tensor each call measured 0.15 ms on
        MobileNetV3-Small's 1.5 ms)."""
        self._pool()
        if self._remote is None:
            with self._lock:
                if self._buffers is None:
                    tvm = _tvm()
                    self._buffers = [tvm.runtime.empty(x.shape, str(x.dtype), self._device) for x in arrays]
                for buf, x in zip(self._buffers, arrays):
                    buf.copyfrom(x if x.flags.c_contiguous else np.ascontiguousarray(x))
                out = _numpy(self._vm["main"](*self._buffers))
            _threads.settled()
            return out

        def call():  # copying the inputs to a remote device, and the outputs back, talk to it too
            self._vm.set_input("main", *self._to_device(arrays))
            self._vm.invoke_stateful("main")
            return _numpy(self._vm.get_outputs("main"))

        return self._remote_call(call)

    def run(self, feeds: dict) -> list[np.ndarray]:
        return self._invoke(self._check(feeds))

    def __call__(self, *args: np.ndarray):
        names = [i["name"] for i in self.inputs]
        if len(args) != len(names):
            raise RuntimeInputError(f"{len(args)} inputs given; the model takes {len(names)}: {names}")
        outs = self.run(dict(zip(names, args)))
        return outs[0] if len(outs) == 1 else outs

    def benchmark(self, warmup: int = 10, repeat: int = 50, number: int = 1,
                  feeds: Optional[dict] = None) -> dict:
        """Latency in milliseconds (median/min/max over ``repeat`` runs, each of ``number`` calls), timed
        where the model runs, on ``self.threads`` threads."""
        for name, value, least in (("warmup", warmup, 0), ("repeat", repeat, 1), ("number", number, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ConfigError(f"benchmark({name}={value!r}): give a whole number >= {least}")
        arrays = self._check(random_feeds(self) if feeds is None else feeds)
        self._pool()

        def timed():
            self._vm.set_input("main", *self._to_device(arrays))
            for _ in range(warmup):
                self._vm.invoke_stateful("main")
            timer = self._vm.time_evaluator("invoke_stateful", self._device, number=number, repeat=repeat)
            return timer("main").results

        ms = np.array(self._remote_call(timed)) * 1e3
        return {"median_ms": float(np.median(ms)), "min_ms": float(ms.min()), "max_ms": float(ms.max()),
                "repeat": repeat, "threads": self.threads}

    def kernel_times(self, runs: int = 5, feeds: Optional[dict] = None,
                     timer: Union[str, Path, None] = None) -> dict[str, list[float]]:
        """Each kernel timed inside the whole model: ``runs`` inferences, the VM timing every call it
        makes; per function it calls (a kernel's symbol, or a VM builtin), the seconds of its calls
        in order. ``timer``: the native timer library built for this module's triple
        (``mobilec.schedules.kernel_timer.build``), loaded where the model runs: on this machine or on
        the remote device alike. Without it a Python callback times each call (a local module only),
        which adds about a microsecond per call and 1-2 ms to a MobileNet's inference."""
        if isinstance(runs, bool) or not isinstance(runs, int) or runs < 1:
            raise ConfigError(f"kernel_times(runs={runs!r}): give a whole number >= 1")
        if timer is not None:
            return self._native_kernel_times(runs, feeds, Path(timer))
        if self._remote is not None:
            raise ConfigError(f"kernel_times: {self.path.name} runs on {self._remote}, which cannot call back into "
                              f"Python: give timer=, the kernel timer built for {self.manifest.triple} "
                              f"(mobilec.schedules.kernel_timer.build)")
        arrays = self._check(random_feeds(self) if feeds is None else feeds)
        times: dict[str, list[float]] = {}
        started: list[float] = []
        clock = time.perf_counter

        def instrument(_func, symbol, before, _ret, *_args):
            if before:
                started.append(clock())
            else:
                times.setdefault(symbol, []).append(clock() - started.pop())
            return 0  # VMInstrumentReturnKind.NoOp: run the call

        self._invoke(arrays)  # the input buffers, and the first call's allocations, before timing
        with self._lock:
            self._vm.set_instrument(instrument)
            try:
                for _ in range(runs):
                    self._vm["main"](*self._buffers)
            finally:
                self._vm.set_instrument(None)
        return times

    def _timer_library(self, path: Path):
        """The timer library at ``path``, loaded where this module runs (once per module)."""
        if self._timer is not None and self._timer[0] == path:
            return self._timer[1]
        if not path.is_file():
            raise ConfigError(f"kernel_times: no timer library at {path}")
        if self._session is None:
            lib = _tvm().runtime.load_module(str(path))
        else:
            lib = self._remote_call(lambda: _upload(self._session, path, path.read_bytes()))
        self._timer = (path, lib)
        return lib

    def _native_kernel_times(self, runs: int, feeds: Optional[dict], timer: Path) -> dict[str, list[float]]:
        arrays = self._check(random_feeds(self) if feeds is None else feeds)
        lib = self._timer_library(timer)
        attach, report = lib["mobilec_kernel_timer_attach"], lib["mobilec_kernel_timer_report"]
        self._invoke(arrays)  # the inputs set, and the first call's allocations, before timing

        def timed():
            self._vm.set_input("main", *self._to_device(arrays))
            report()  # nothing left over from an earlier, interrupted run
            attach(self._vm.module, True)  # the timer sets itself as the VM's instrument, on the device
            try:
                for _ in range(runs):
                    self._vm.invoke_stateful("main")
            finally:
                attach(self._vm.module, False)
            return str(report())

        with self._lock:
            return json.loads(self._remote_call(timed))


def _check_signature(vm, manifest: Manifest, path: Path) -> None:
    """The manifest's inputs and outputs are the ones the library was compiled with (its own
    ``SIGNATURE`` function says them): a manifest edited by hand is refused, not trusted."""
    try:
        own = bytes(np.asarray(_numpy(vm[SIGNATURE]())[0], dtype=np.uint8))
    except Exception:  # noqa: BLE001 - TVM says a missing function in several ways
        raise ManifestError(f"{path}: the library carries no signature of its inputs and outputs (manifest schema "
                            f"{manifest.schema}: compiled by an older mobilec?); recompile it with `mobilec "
                            f"compile`") from None
    if own != signature(manifest.inputs, manifest.outputs):
        lib = json.loads(own)
        raise ManifestError(f"{path}: its manifest says inputs {_described(manifest.inputs)} and outputs "
                            f"{_described(manifest.outputs)}, the library was compiled for inputs "
                            f"{_described(lib['inputs'])} and outputs {_described(lib['outputs'])}; the manifest "
                            f"was edited after compiling: restore it or recompile")


def _described(infos: list[dict]) -> str:
    return ", ".join(f"{i['name']} {'x'.join(map(str, i['shape']))} {i['dtype']}" for i in infos)


def random_feeds(module: Module, seed: int = 0) -> dict:
    """Seeded standard-normal inputs of the shapes and dtypes ``module`` takes."""
    rng = np.random.default_rng(seed)
    return {i["name"]: rng.standard_normal(i["shape"]).astype(i["dtype"]) for i in module.inputs}


def per_inference_us(calls: list[float], runs: int) -> float:
    """One function's time per inference, in microseconds, from its call times (``Module.kernel_times``)
    over ``runs`` inferences: its median call times its calls per inference."""
    return float(np.median(calls)) * len(calls) / runs * 1e6


def load(path: Union[str, Path], threads: Optional[int] = None, cores: Optional[str] = None,
         check_finite: bool = True) -> Module:
    """Load ``path`` (a .so compiled by mobilec) after checking it against ``path.json``.

    ``threads``: how many threads each call runs on (default: one per core this process may run on,
    see ``os.sched_getaffinity``; on ARM, one per big core). ``cores``: "big", "little" or "all"
    (default: "big" on ARM hosts, "all" elsewhere). ``check_finite=False`` skips the NaN/Inf check
    of the inputs; results for non-finite inputs are then undefined."""
    path = Path(path)
    n, cpus = _threads.plan(threads, cores)  # bad arguments fail before any file is read
    manifest, data = _verified_bytes(path)
    # Load the bytes that were hashed: a private copy (0600 in a 0700 directory) that nobody can
    # swap between the check and the load; TVM keeps its mapping once loaded, so the copy goes.
    tmp = tempfile.mkdtemp(prefix="mobilec-load-")
    try:
        copy = os.path.join(tmp, path.name)
        fd = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        ok, arch, here = can_run_here(copy)
        if not ok:
            raise ManifestError(f"{path}: built for {arch} ({manifest.triple}); this machine is {here}. "
                                f"Run it on {article(arch)} {arch} device, e.g. "
                                f"mr.connect(tracker=..., key=...).load(path)")
        lacking = missing_cpu_flags(manifest.cpu_needs)
        if lacking:  # it would die of an illegal instruction at the first call
            raise ManifestError(f"{path}: built for cpu {manifest.cpu}, which needs {', '.join(lacking)}; this "
                                f"machine's CPU lacks it. Recompile for this machine with --target host")
        lib = _load_library(copy)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    tvm = _tvm()
    device = tvm.cpu()
    from tvm.runtime.vm import VirtualMachine

    vm = VirtualMachine(lib, device)
    _check_signature(vm, manifest, path)
    module = Module(manifest, vm, device, path, threads=n, cpus=cpus, check_finite=check_finite)
    module._pool()  # size the pool now: Module.threads reports what TVM really runs on
    return module


class Remote:
    """A device reached through an RPC tracker (or a server directly)."""

    def __init__(self, session, description: str):
        self.session, self.description = session, description

    def __repr__(self):
        return self.description

    def load(self, path: Union[str, Path], threads: Optional[int] = None, check_finite: bool = True) -> Module:
        """Upload ``path`` (the verified bytes) and load it on the device. ``threads``: how many of the
        device's big cores to run on (default: TVM's default on the device)."""
        path = Path(path)
        manifest, data = _verified_bytes(path)
        arch = elf_arch_of(data)
        try:
            lib = _upload(self.session, path, data)
        except Exception as e:  # noqa: BLE001 - TVM words a wrong-architecture library as a missing file
            if "shared library" not in str(e) and "ELF" not in str(e):
                raise RemoteError(f"lost the RPC session to {self.description} while loading {path.name}: "
                                  f"{_first_line(e)}; check the device with `mobilec rpc devices`") from None
            raise RemoteError(f"the device {self.description} could not load {path.name}, built for {arch} "
                              f"({manifest.triple}): is the device {article(arch)} {arch} machine? (`mobilec rpc "
                              f"devices` lists the keys; TVM said: {_first_line(e)})") from None
        device = self.session.cpu()
        from tvm.runtime.vm import VirtualMachine

        n = _threads.configure_remote(self.session, threads)
        vm = VirtualMachine(lib, device)
        _check_signature(vm, manifest, path)
        return Module(manifest, vm, device, path, remote=self.description, threads=n, check_finite=check_finite,
                      session=self.session)


def _upload(session, path: Path, data: bytes):
    """``data`` (the library ``path``) uploaded to the device and loaded there. A fresh name per
    load: writing over a library the device still has mapped (an earlier load of the same file in
    this session) kills the server."""
    name = f"{path.stem}-{uuid.uuid4().hex[:8]}{path.suffix}"
    session.upload(bytearray(data), target=name)
    return session.load_module(name)


def connect(tracker: Optional[str] = None, key: Optional[str] = None, server: Optional[str] = None,
            timeout: float = 60.0, session_timeout: float = 600.0) -> Remote:
    """Open an RPC session: through a tracker (``tracker="host:port", key=...``) or straight to a
    server (``server="host:port"``)."""
    import gc

    from mobilec.rpc.client import open_session

    # A session this process dropped but has not collected yet (TVM's objects form reference
    # cycles) still holds its device: a one-session server would look busy until the next GC.
    gc.collect()
    session, description = open_session(tracker=tracker, key=key, server=server, timeout=timeout,
                                        session_timeout=session_timeout, tvm=_tvm())
    return Remote(session, description)
