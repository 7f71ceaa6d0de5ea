"""A stop (Ctrl-C, SIGTERM) that arrives while TVM runs mobilec's Python code is held until the
work is back in Python: raised inside a callback, it would have to unwind through TVM's C++."""

import os
import signal
import subprocess
import sys
import time

import pytest
import tvm
from tvm.script import tirx as T

from mobilec import stops


def _signal_self(sig):
    os.kill(os.getpid(), sig)
    time.sleep(0.05)  # the handler runs at the next bytecode after delivery


@T.prim_func
def _copy(a: T.Buffer((4,), "float32"), b: T.Buffer((4,), "float32")):
    for i in range(4):
        b[i] = a[i]


def _pass_that_is_stopped(sig, ran):
    """A Python pass, called by TVM's C++ pass infrastructure, during which ``sig`` arrives."""
    @tvm.transform.module_pass(opt_level=0, name="test.StoppedInside")
    def stopped(mod, _ctx):
        _signal_self(sig)
        ran.append(stops.pending())  # held, not raised: the pass finishes
        return mod
    return stopped


@pytest.mark.structure
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_stop_inside_tvm_is_raised_when_python_has_control_again(sig):
    restore = stops.install()
    ran = []
    try:
        with pytest.raises(stops.Stopped) as stopped:
            with stops.inside_tvm():
                tvm.transform.Sequential([_pass_that_is_stopped(sig, ran)])(tvm.IRModule({"copy": _copy}))
                ran.append("after")  # the rest of the block runs too: only its end raises
        assert stopped.value.signum == sig
        assert ran == [True, "after"] and not stops.pending()
        with pytest.raises(stops.Stopped):  # outside TVM a stop is raised at once
            _signal_self(sig)
    finally:
        restore()


@pytest.mark.structure
def test_nested_blocks_raise_once_at_the_outermost_end():
    restore = stops.install()
    try:
        with pytest.raises(stops.Stopped):
            with stops.inside_tvm():
                with stops.inside_tvm():
                    _signal_self(signal.SIGTERM)
                assert stops.pending()  # the inner end does not raise
        assert not stops.pending()
    finally:
        restore()


@pytest.mark.structure
def test_without_installed_handlers_ctrl_c_is_held_for_the_block_then_python_s_own():
    """A library user's program: Python's own SIGINT handler, held inside TVM and put back. (Set
    here: a process started in the background of a non-interactive shell begins with SIGINT
    ignored, and Python then installs no handler of its own.)"""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            with stops.inside_tvm():
                _signal_self(signal.SIGINT)
                assert stops.pending()  # held until the block ends
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        with pytest.raises(ZeroDivisionError):  # any other error passes through untouched
            with stops.inside_tvm():
                1 / 0
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.structure
def test_a_second_stop_while_one_is_held_ends_the_process_at_once():
    """Ctrl-C pressed twice during a long TVM step: the first is held and said, the second ends it."""
    script = ("import os, signal, time\n"
              "from mobilec import stops\n"
              "stops.install()\n"
              "with stops.inside_tvm():\n"
              "    os.kill(os.getpid(), signal.SIGINT); time.sleep(0.2)\n"
              "    print('held', flush=True)\n"
              "    os.kill(os.getpid(), signal.SIGTERM); time.sleep(5)\n"
              "print('not reached')\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 128 + signal.SIGTERM, done
    assert done.stdout == "held\n"
    assert "press Ctrl-C again to stop at once" in done.stderr and "stopped at once" in done.stderr
