"""`mobilec rpc tracker|server` stopped by SIGTERM, Ctrl-C or SIGHUP stop everything they started."""

import os
import signal
import socket
import subprocess
import sys
import time

import psutil
import pytest

from mobilec.rpc import devices, local

pytestmark = pytest.mark.rpc


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex((local.LOOPBACK, port)) == 0


def wait_for(cond, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def mobilec(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mobilec", "rpc", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def descendants(proc: subprocess.Popen) -> list[psutil.Process]:
    return psutil.Process(proc.pid).children(recursive=True)


def assert_all_gone(procs: list[psutil.Process]) -> None:
    gone, alive = psutil.wait_procs(procs, timeout=15)
    assert not alive, f"left running: {[(p.pid, p.cmdline()) for p in alive]}"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_stopping_the_tracker_command_stops_the_tracker(sig):
    port = local.free_port()
    cmd = mobilec("tracker", "--port", str(port))
    try:
        wait_for(lambda: listening(port), 60, "the tracker to listen")
        children = descendants(cmd)
        assert children, "the tracker runs as a child process"
        cmd.send_signal(sig)
        assert cmd.wait(30) == 128 + sig
        assert_all_gone(children)
        assert not listening(port)
    finally:
        if cmd.poll() is None:
            cmd.kill()


def test_stopping_the_server_command_unregisters_the_device():
    with local.tracker() as tracker:
        cmd = mobilec("server", "--tracker", tracker, "--key", "sigterm-board", "--port", str(local.free_port()))
        try:
            wait_for(lambda: devices(tracker).get("sigterm-board", {}).get("free", 0) > 0, 60, "registration")
            children = descendants(cmd)
            cmd.send_signal(signal.SIGTERM)
            assert cmd.wait(30) == 128 + signal.SIGTERM
            assert_all_gone(children)
            wait_for(lambda: not devices(tracker).get("sigterm-board", {}).get("servers"), 30,
                     "the tracker to drop the device")
        finally:
            if cmd.poll() is None:
                cmd.kill()


def test_server_dies_with_a_killed_parent():
    """Even SIGKILL of the process that started it (no chance to clean up) ends the TVM process,
    and its scratch directory goes with it."""
    port = local.free_port()
    code = ("import sys, time; from mobilec.rpc import local; "
            f"p = local.start(local.tracker_command('127.0.0.1', {port}), quiet=True); "
            "print(p.pid, p.mobilec_scratch, flush=True); time.sleep(600)")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        pid, scratch = parent.stdout.readline().split()
        child = psutil.Process(int(pid))
        assert os.path.isdir(scratch)
        wait_for(lambda: listening(port), 60, "the tracker to listen")
        started = [child] + child.children(recursive=True)
        assert len(started) >= 3, "TVM's tracker runs its loop in a worker process of its own"
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(10)
        assert_all_gone(started)
        assert not listening(port)
        assert not os.path.exists(scratch), "the scratch directory outlived the killed parent"
    finally:
        if parent.poll() is None:
            parent.kill()
