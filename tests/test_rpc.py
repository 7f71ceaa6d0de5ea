"""RPC faults: each a clear error within bounded time, never a hang."""

import time
from pathlib import Path

import pytest

import mobilec.runtime as mr
from mobilec.rpc import RPCError, devices, local

pytestmark = pytest.mark.rpc


def test_tracker_down():
    port = local.free_port()
    start = time.time()
    with pytest.raises(RPCError, match=f"cannot reach the RPC tracker at 127.0.0.1:{port}"):
        devices(f"127.0.0.1:{port}")
    assert time.time() - start < 15


def test_devices_listing_and_unknown_key():
    with local.tracker() as tracker, local.server(tracker, "board"):
        d = devices(tracker)
        assert d["board"]["free"] == 1 and len(d["board"]["servers"]) == 1
        with pytest.raises(RPCError, match=r"no device registered under key 'phone'.*keys: board"):
            mr.connect(tracker=tracker, key="phone")


def test_all_busy_times_out():
    with local.tracker() as tracker, local.server(tracker, "solo"):
        first = mr.connect(tracker=tracker, key="solo")  # holds the only server
        start = time.time()
        with pytest.raises(RPCError, match="no free 'solo' device"):
            mr.connect(tracker=tracker, key="solo", timeout=3)
        assert time.time() - start < 10
        del first


def test_device_lost_mid_session(compiled):
    lib = compiled("mobilenet_v3_small_035").library
    with local.tracker() as tracker, local.server(tracker, "flaky") as proc:
        m = mr.connect(tracker=tracker, key="flaky").load(lib)
        local.kill(proc)
        start = time.time()
        with pytest.raises(mr.RemoteError, match="lost the RPC session to flaky"):
            m.benchmark(warmup=0, repeat=1)
        assert time.time() - start < 30


def test_killed_server_leaves_no_uploads_behind(compiled):
    """TVM's server unpacks each upload into a temporary directory it removes only on a clean exit;
    mobilec's servers keep theirs in a scratch directory removed when stopped, kill or not."""
    lib = compiled("mobilenet_v3_small_035").library
    with local.tracker() as tracker, local.server(tracker, "scratch") as proc:
        scratch = Path(proc.mobilec_scratch)
        m = mr.connect(tracker=tracker, key="scratch").load(lib)
        m.benchmark(warmup=0, repeat=1)
        assert any(scratch.rglob("*")), "the upload did not land in the server's scratch directory"
        local.kill(proc)
    assert not scratch.exists()


def test_bad_addresses():
    with pytest.raises(RPCError, match="HOST:PORT"):
        devices("localhost")
    with pytest.raises(RPCError, match="cannot connect to the RPC server"):
        mr.connect(server=f"127.0.0.1:{local.free_port()}")


def test_non_loopback_bind_warns():
    with pytest.warns(UserWarning, match="no authentication"):
        local.warn_if_exposed("0.0.0.0")


def test_session_timeout(compiled):
    lib = compiled("mobilenet_v3_small_035").library
    with local.tracker() as tracker, local.server(tracker, "short"):
        m = mr.connect(tracker=tracker, key="short", session_timeout=3).load(lib)
        time.sleep(5)  # the server ends the session after 3 s
        start = time.time()
        with pytest.raises(mr.RemoteError, match="lost the RPC session"):
            m.benchmark(warmup=0, repeat=1)
        assert time.time() - start < 30
