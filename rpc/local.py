"""Local RPC processes (TVM's own tracker and server) as context managers.

TVM RPC has no authentication: everything binds to 127.0.0.1 unless the caller names a host.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from contextlib import contextmanager
from typing import Iterator, Optional, Sequence

from mobilec.rpc.client import RPCError, devices

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def warn_if_exposed(host: str) -> None:
    if host not in (LOOPBACK, "localhost", "::1"):
        warnings.warn(f"binding TVM RPC to {host}: TVM RPC has no authentication, anyone who can reach "
                      f"this address can run code here", stacklevel=3)


def _stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    """Stop the process and its children (TVM's server forks one worker per session): each runs in
    its own process group. Then its scratch directory goes (see ``start``)."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    _remove_scratch(proc)


def _remove_scratch(proc: subprocess.Popen) -> None:
    scratch = getattr(proc, "mobilec_scratch", None)
    if scratch:
        shutil.rmtree(scratch, ignore_errors=True)


def kill(proc: subprocess.Popen) -> None:
    """SIGKILL a server and its session workers at once, as a device that disappears."""
    _stop(proc, signal.SIGKILL)


def _wait_port(host: str, port: int, proc: subprocess.Popen, what: str, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RPCError(f"{what} exited with code {proc.returncode} before listening on {host}:{port}")
        with socket.socket() as s:
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.2)
    _stop(proc)
    raise RPCError(f"{what} did not listen on {host}:{port} within {timeout:g} s")


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the process that started it dies, even by SIGKILL
    (Linux prctl PR_SET_PDEATHSIG), so no TVM server outlives mobilec."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass


# TVM's tracker and server run their loop in a child process of their own (a PopenWorker), which
# outlives them when they alone are killed. So each runs under a shell that, told to stop (or
# when mobilec dies, even by SIGKILL), removes the scratch directory and kills the whole process
# group: the TVM process and everything it started.
_GROUP_GUARD = ["sh", "-c", 'trap \'[ -n "$MOBILEC_RPC_SCRATCH" ] && rm -rf "$MOBILEC_RPC_SCRATCH"; kill -KILL 0\' '
                'TERM INT HUP; "$@" & wait $!', "mobilec-rpc"]


def start(cmd: Sequence[str], env: Optional[dict] = None, quiet: bool = False) -> subprocess.Popen:
    """Start a TVM RPC process in its own process group, tied to this process's life. Its
    temporary files (TVM's server unpacks every uploaded library into a fresh temporary directory
    and removes it only on a clean exit, which a killed server never has) go to a scratch
    directory of its own, removed when mobilec stops it or dies. Under a chroot, where that path does not
    exist, Python falls back to the root's /tmp."""
    out = subprocess.DEVNULL if quiet else None
    scratch = tempfile.mkdtemp(prefix="mobilec-rpc-")
    proc = subprocess.Popen(_GROUP_GUARD + list(cmd),
                            env={**os.environ, **(env or {}), "TMPDIR": scratch, "MOBILEC_RPC_SCRATCH": scratch},
                            stdout=out, stderr=out, start_new_session=True, preexec_fn=_die_with_parent)
    proc.mobilec_scratch = scratch
    return proc


class _Stopped(Exception):
    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def run_foreground(cmd: Sequence[str], env: Optional[dict] = None) -> int:
    """Run a TVM RPC process until it exits or this process is told to stop (Ctrl-C, SIGTERM,
    SIGHUP); stopping stops it and everything it started. Returns the exit status (128 + signal
    when stopped by one)."""

    def stop(signum, _frame):
        raise _Stopped(signum)

    previous = {sig: signal.signal(sig, stop) for sig in STOP_SIGNALS}
    proc = None
    try:
        proc = start(cmd, env)
        status = proc.wait()
        _remove_scratch(proc)
        return status
    except _Stopped as e:
        return 128 + e.signum
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    finally:
        for sig in STOP_SIGNALS:  # a second signal while stopping must not leave the child behind
            signal.signal(sig, signal.SIG_IGN)
        if proc is not None:
            _stop(proc)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def tracker_command(host: str, port: int) -> list[str]:
    return [sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", host, "--port", str(port),
            "--port-end", str(port + 1)]


def server_command(tracker: str, key: str, host: str = LOOPBACK, port: int = 9090,
                   python: Sequence[str] = (sys.executable,), load_library: Optional[str] = None) -> list[str]:
    cmd = [*python, "-m", "tvm.exec.rpc_server", "--host", host, "--port", str(port),
           "--port-end", str(port + 100), "--tracker", tracker, "--key", key]
    if load_library:
        cmd += ["--load-library", load_library]
    return cmd


@contextmanager
def tracker(host: str = LOOPBACK, port: Optional[int] = None, timeout: float = 60.0) -> Iterator[str]:
    """Run TVM's RPC tracker; yields ``host:port``."""
    warn_if_exposed(host)
    port = port or free_port()
    proc = start(tracker_command(host, port), quiet=True)
    try:
        _wait_port(host, port, proc, "the RPC tracker", timeout)
        yield f"{host}:{port}"
    finally:
        _stop(proc)


def _registered(tracker_addr: str, key: str) -> int:
    try:
        known = devices(tracker_addr).get(key, {})
    except RPCError:
        return 0
    return max(len(known.get("servers", [])), known.get("free", 0))


def wait_registered(tracker_addr: str, key: str, proc: subprocess.Popen, timeout: float, before: int = 0) -> None:
    """Until more than ``before`` servers are registered under ``key`` (another device of a farm
    joins a key that has some already)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RPCError(f"RPC server for key {key!r} exited with code {proc.returncode} before registering")
        if _registered(tracker_addr, key) > before:
            return
        time.sleep(0.5)
    raise RPCError(f"RPC server for key {key!r} did not register at {tracker_addr} within {timeout:g} s")


@contextmanager
def server(tracker_addr: str, key: str, host: str = LOOPBACK, command: Optional[list[str]] = None,
           env: Optional[dict] = None, timeout: float = 120.0) -> Iterator[subprocess.Popen]:
    """Run TVM's RPC server registered at the tracker under ``key``; yields the process."""
    warn_if_exposed(host)
    cmd = command or server_command(tracker_addr, key, host, port=free_port())
    before = _registered(tracker_addr, key)
    proc = start(cmd, env or {}, quiet=True)
    try:
        wait_registered(tracker_addr, key, proc, timeout, before)
        yield proc
    finally:
        _stop(proc)
