"""Ctrl-C, SIGTERM and SIGHUP stop mobilec's work, but never from inside TVM.

TVM calls back into Python all the time: a TIR pass, MetaSchedule's builder, runner, cost model
and measure callbacks. A Python exception raised by a signal handler in such a callback has to
unwind through TVM's C++ frames, and some of them cannot pass it on: the process ends in
``std::terminate`` (seen as a SIGSEGV from TVM's crash handler) instead of unwinding. So work that
calls into TVM runs in ``inside_tvm()``: a stop arriving there is held (and said on stderr), and
raised as ``Stopped`` when the outermost such block returns to Python. A tuning search asks
``pending()`` after each measured round and ends its loop there, like its time budget. A second
stop while one is held ends the process at once (exit status 128 + signal), as a user pressing
Ctrl-C twice asks: no clean-up then.

Outside such blocks a stop raises ``Stopped`` (a ``KeyboardInterrupt``) at once, so the work in
progress unwinds: a tuning run's private temporary folder and half-written outputs are removed
and its database stays whole.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Callable

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

_held: list[int] = []  # stops that arrived inside TVM, oldest first
_depth = 0  # how many inside_tvm() blocks the main thread is in


class Stopped(KeyboardInterrupt):
    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _handler(signum, _frame):
    if not _depth:
        raise Stopped(signum)
    if _held:  # a second stop while the first waits for TVM: stop now, as asked
        os.write(2, b"mobilec: stopped at once\n")
        os._exit(128 + signum)
    _held.append(signum)
    os.write(2, b"mobilec: stopping when the current TVM step returns (press Ctrl-C again to stop at once)\n")


def install() -> Callable[[], None]:
    """Stop on SIGINT, SIGTERM and SIGHUP (the command line does this); returns the function that
    puts the previous handlers back. Only the main thread can handle signals: elsewhere this does
    nothing."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    _held.clear()
    previous = {sig: signal.signal(sig, _handler) for sig in SIGNALS}

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return restore


def pending() -> bool:
    """A stop arrived inside TVM and waits for the work to return to Python."""
    return bool(_held)


@contextlib.contextmanager
def inside_tvm():
    """Hold stops while the block runs (it calls into TVM, which may call Python back); raise the
    first one as ``Stopped`` when the outermost block ends. In a program that did not ``install``
    mobilec's handlers, Python's own Ctrl-C handler is held the same way for the block."""
    global _depth
    main = threading.current_thread() is threading.main_thread()
    swapped = None
    if main and _depth == 0 and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        _held.clear()
        swapped = signal.signal(signal.SIGINT, _handler)
    if main:
        _depth += 1
    try:
        yield
    except BaseException:
        if not (main and _depth == 1 and _held):
            raise
        # the block ended early because of the held stop (a search ends its loop when asked)
    finally:
        if main:
            _depth -= 1
            if swapped is not None:
                signal.signal(signal.SIGINT, swapped)
    if main and _depth == 0 and _held:
        signum = _held[0]
        _held.clear()
        raise Stopped(signum) from None
