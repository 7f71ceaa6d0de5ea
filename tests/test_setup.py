"""Set-up gets the CPU build of torch: PyTorch's CPU index when reachable, the configured one otherwise."""

import functools
import http.server
import re
import subprocess
import threading
from pathlib import Path

import pytest

from mobilec.rpc.local import free_port

pytestmark = pytest.mark.structure
ROOT = Path(__file__).resolve().parent.parent


def torch_index_args(index: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / ".ci" / "torch-index")], env={"TORCH_CPU_INDEX": index, "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=60, check=True)


def test_reachable_cpu_index_is_passed_to_pip(tmp_path):
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "index.html").write_text('<a href="torch-2.13.0+cpu-cp311-cp311-linux_x86_64.whl">t</a>')
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        assert torch_index_args(url).stdout.split() == ["--extra-index-url", url]
    finally:
        server.shutdown()


def test_unreachable_index_falls_back_with_a_note():
    out = torch_index_args(f"http://127.0.0.1:{free_port()}")
    assert out.stdout.strip() == "" and "unreachable" in out.stderr


def test_setup_uses_it_and_torch_is_pinned():
    assert ".ci/torch-index" in (ROOT / ".ci" / "setup").read_text()
    assert re.search(r'"torch==2\.13\.0"', (ROOT / "setup.py").read_text())
