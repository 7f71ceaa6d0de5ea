"""RPC side: TVM's tracker and servers, the device list, and an emulated aarch64 device.
Needs no compiler."""

from mobilec.rpc.client import RPCError, devices, open_session, parse_addr, summary

__all__ = ["RPCError", "devices", "open_session", "parse_addr", "summary"]
