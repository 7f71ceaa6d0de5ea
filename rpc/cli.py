"""``mobilec rpc tracker|server|devices|emulate``: parsing only; the work is in local.py / emulate.py."""

from __future__ import annotations

import sys

from mobilec.rpc.local import LOOPBACK


def add_arguments(p) -> None:
    sub = p.add_subparsers(dest="rpc_verb", required=True, metavar="RPC_VERB")
    t = sub.add_parser("tracker", help="run TVM's RPC tracker (foreground)")
    t.add_argument("--host", default=LOOPBACK, help="bind address (default 127.0.0.1; TVM RPC has no auth)")
    t.add_argument("--port", type=int, default=9190)
    s = sub.add_parser("server", help="run TVM's RPC server on this machine, registered at a tracker")
    s.add_argument("--tracker", required=True, help="HOST:PORT")
    s.add_argument("--key", required=True)
    s.add_argument("--host", default=LOOPBACK)
    s.add_argument("--port", type=int, default=9090)
    d = sub.add_parser("devices", help="keys, free and busy servers at a tracker")
    d.add_argument("--tracker", default=f"{LOOPBACK}:9190")
    e = sub.add_parser("emulate", help="run an emulated aarch64 Linux device (qemu user mode) at a tracker")
    e.add_argument("--arch", default="aarch64", choices=["aarch64"])
    e.add_argument("--key", default="emu-aarch64")
    e.add_argument("--tracker", default=f"{LOOPBACK}:9190")
    e.add_argument("--cache", help="where the root filesystem is built and kept "
                   "(default $MOBILEC_CACHE or ~/.cache/mobilec)")
    e.add_argument("--build-only", action="store_true", help="build the root filesystem and exit")


def dispatch(args) -> int:
    from mobilec.rpc import local

    if args.rpc_verb == "tracker":
        local.warn_if_exposed(args.host)
        print(f"RPC tracker on {args.host}:{args.port} (Ctrl-C stops it)", flush=True)
        return local.run_foreground(local.tracker_command(args.host, args.port))
    if args.rpc_verb == "server":
        local.warn_if_exposed(args.host)
        print(f"RPC server for key {args.key!r}, registering at {args.tracker} (Ctrl-C stops it)", flush=True)
        return local.run_foreground(local.server_command(args.tracker, args.key, args.host, args.port))
    if args.rpc_verb == "devices":
        from mobilec.rpc.client import devices

        rows = devices(args.tracker)
        if not rows:
            print(f"no devices registered at {args.tracker}")
        for key, info in sorted(rows.items()):
            busy = max(len(info["servers"]) - info["free"], 0)
            print(f"{key:20s} free {info['free']}  busy {busy}  pending requests {info['pending']}")
        return 0
    if args.rpc_verb == "emulate":
        from mobilec.rpc import emulate

        cfg = emulate.EmulatorConfig(arch=args.arch, cache=args.cache)
        rootfs = emulate.build_rootfs(cfg)
        if args.build_only:
            print(f"root filesystem ready at {rootfs}")
            return 0
        print(f"emulated {args.arch} device {args.key!r} registering at {args.tracker} (Ctrl-C stops it)",
              flush=True)
        return local.run_foreground(emulate.server_command(cfg, args.tracker, args.key))
    print(f"unknown rpc verb {args.rpc_verb}", file=sys.stderr)
    return 2
