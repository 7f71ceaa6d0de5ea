"""Opening RPC sessions through TVM's tracker, with clear errors instead of hangs."""

from __future__ import annotations

import threading
from typing import Optional

from mobilec.errors import UserError


class RPCError(UserError, RuntimeError):
    pass


def parse_addr(text: str, what: str = "tracker") -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise RPCError(f"--{what} {text!r}: expected HOST:PORT, e.g. 127.0.0.1:9190")
    return host, int(port)


def _tvm_rpc(tvm=None):
    if tvm is None:
        import tvm
    from tvm import rpc

    return rpc


_TIMEOUT = object()


def _bounded(fn, timeout: float):
    """Run a blocking TVM RPC call with a deadline: (value, None), (None, exception) or
    (None, _TIMEOUT). TVM's tracker client blocks without limit (a request waits for a free
    server forever), so the call runs in a daemon thread that is abandoned on timeout."""
    result: dict = {}

    def call():
        try:
            result["value"] = fn()
        except Exception as e:  # noqa: BLE001 - the caller words the error with the address
            result["error"] = e

    t = threading.Thread(target=call, daemon=True)
    t.start()
    t.join(timeout)
    if "value" in result:
        return result["value"], None
    return None, result.get("error", _TIMEOUT)


def summary(tracker: str, timeout: float = 10.0, tvm=None) -> dict:
    """The tracker's summary: ``{"server_info": [...], "queue_info": {key: {"free", "pending"}}}``."""
    rpc = _tvm_rpc(tvm)
    host, port = parse_addr(tracker)
    value, error = _bounded(lambda: rpc.connect_tracker(host, port).summary(), timeout)
    if error is None:
        return value
    reason = error if error is not _TIMEOUT else f"no answer in {timeout:g} s"
    raise RPCError(f"cannot reach the RPC tracker at {host}:{port} ({reason}); "
                   f"start one with `mobilec rpc tracker --port {port}`")


def devices(tracker: str, tvm=None) -> dict[str, dict]:
    """Per key: free and pending counts and server addresses."""
    s = summary(tracker, tvm=tvm)
    out = {k: {"free": v.get("free", 0), "pending": v.get("pending", 0), "servers": []}
           for k, v in s.get("queue_info", {}).items()}
    for info in s.get("server_info", []):
        key = info.get("key", "").removeprefix("server:")
        out.setdefault(key, {"free": 0, "pending": 0, "servers": []})["servers"].append(info.get("addr"))
    return out


def request(tracker: str, key: str, timeout: float = 60.0, session_timeout: float = 600.0, tvm=None):
    """A session on a free server registered under ``key``; errors rather than waits forever."""
    rpc = _tvm_rpc(tvm)
    host, port = parse_addr(tracker)
    known = devices(tracker, tvm=tvm)
    if key not in known or not (known[key]["servers"] or known[key]["free"]):
        keys = ", ".join(sorted(known)) or "none"
        raise RPCError(f"no device registered under key {key!r} at tracker {host}:{port} (keys: {keys}); "
                       f"start one with `mobilec rpc server --tracker {host}:{port} --key {key}`")
    session, error = _bounded(
        lambda: rpc.connect_tracker(host, port).request(key, priority=1, session_timeout=session_timeout), timeout)
    if error is None:
        return session
    if error is not _TIMEOUT:
        raise RPCError(f"tracker {host}:{port} could not give a {key!r} device: {error}")
    raise RPCError(f"no free {key!r} device at tracker {host}:{port} within {timeout:g} s "
                   f"(all busy: {known[key]})")


def open_session(tracker: Optional[str] = None, key: Optional[str] = None, server: Optional[str] = None,
                 timeout: float = 60.0, session_timeout: float = 600.0, tvm=None):
    rpc = _tvm_rpc(tvm)
    if server:
        host, port = parse_addr(server, "server")
        try:
            return rpc.connect(host, port, session_timeout=session_timeout), f"server {host}:{port}"
        except Exception as e:  # noqa: BLE001
            raise RPCError(f"cannot connect to the RPC server at {host}:{port}: {e}") from None
    if not tracker or not key:
        raise RPCError("give tracker= and key= (or server=) to reach a device")
    return request(tracker, key, timeout, session_timeout, tvm), f"{key} via tracker {tracker}"
