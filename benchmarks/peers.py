"""The phone runtimes mobilec is measured against: LiteRT with XNNPACK, ncnn and MNN.

Each peer gets the model mobilec compiles, with the same weights (``create_model``'s seeded,
batch-norm-calibrated network), converted the way that runtime's users convert it:

    litert xnnpack  PyTorch -> torch.export -> ``litert_torch.convert`` -> .tflite; run by
                    ``ai_edge_litert``'s Interpreter (XNNPACK is its default CPU delegate)
    ncnn            PyTorch -> ``pnnx.export`` (TorchScript trace, fp32 weights) -> .param/.bin;
                    run by ``ncnn`` with fp16/bf16 storage and arithmetic off (fp32 like the rest)
    mnn             our ONNX file -> MNN's converter -> .mnn; run by ``MNN``'s Module API

The runtimes and pnnx install into the benchmark's environment (``pip install .[peers]``).
litert-torch does not: it pins typing_extensions below what the main environment has and pulls
JAX and transformers, so it lives in its own virtual environment and converts by subprocess:

    python3 -m venv .venv-peers && .venv-peers/bin/pip install torch==2.13.0 litert-torch==0.10.0

(torch==2.13.0 there too: the .pt2 file the parent exports must load in the same torch.) Every
conversion runs in a child process, so a converter that fails or crashes marks its peer skipped
with the reason instead of ending the benchmark. MNN's converter is called through its C entry
point (``_tools.mnnconvert``): the ``mnnconvert`` script's logger runs ``pip install -U
aliyun-log-python-sdk`` into whatever pip is first on PATH and then posts usage logs.

Run as a script, this file is the child: ``peers.py convert {litert,ncnn,mnn} ...``.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

PEERS = {"litert": "litert xnnpack", "ncnn": "ncnn", "mnn": "mnn"}  # --peers key -> engine name
LITERT_CONVERTER = ["torch==2.13.0", "litert-torch==0.10.0"]  # what .venv-peers holds
CONVERT_TIMEOUT_S = 1200


class Skipped(Exception):
    """A peer that cannot run here; the message is the reason shown in the table."""


def _have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _child(args: list[str], python: str) -> None:
    """Run ``peers.py convert ...`` in ``python``; a failure becomes Skipped with the child's last words."""
    try:
        proc = subprocess.run([python, __file__, "convert", *args], capture_output=True, text=True,
                              timeout=CONVERT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise Skipped(f"converter ran past {CONVERT_TIMEOUT_S} s") from None
    if proc.returncode:
        lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        last = next((ln for ln in reversed(lines) if "Error" in ln or "error" in ln), lines[-1] if lines else "")
        raise Skipped(f"converter failed (exit {proc.returncode}): {last[:300]}")


def _plain(model):
    """The model with a single tensor output (LR-ASPP returns {'out': ...})."""
    import torch

    class Plain(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            out = self.inner(x)
            return out["out"] if isinstance(out, dict) else out

    return Plain(model).eval()


# ---------------------------------------------------------------------------------------------
# parent: convert every requested peer for one model

def convert(keys: list[str], model: str, onnx_path: Path, shape: list[int], tmp: Path, peers_python: str) -> dict:
    """engine name -> {"artifact": path, "convert_s": s} or {"skipped": reason}."""
    out = {}
    for key in keys:
        t = time.perf_counter()
        try:
            artifact = _CONVERTERS[key](model, onnx_path, shape, tmp, peers_python)
            out[PEERS[key]] = {"artifact": str(artifact), "convert_s": time.perf_counter() - t}
        except Skipped as e:
            out[PEERS[key]] = {"skipped": str(e)}
    return out


def _convert_litert(model: str, onnx_path: Path, shape: list[int], tmp: Path, peers_python: str) -> Path:
    if not _have("ai_edge_litert"):
        raise Skipped("ai-edge-litert not installed (pip install .[peers])")
    if _have("litert_torch"):
        python = sys.executable
    elif Path(peers_python).exists():
        python = peers_python
    else:
        raise Skipped(f"litert-torch not installed here nor at {peers_python} "
                      f"(python3 -m venv .venv-peers && .venv-peers/bin/pip install {' '.join(LITERT_CONVERTER)})")
    import torch

    from mobilec.frontends.registry import create_model

    pt2 = tmp / f"{model}.pt2"
    torch.export.save(torch.export.export(_plain(create_model(model)), (torch.zeros(shape),)), pt2)
    tflite = tmp / f"{model}.tflite"
    _child(["litert", str(pt2), str(tflite)], python)
    return tflite


def _convert_ncnn(model: str, onnx_path: Path, shape: list[int], tmp: Path, peers_python: str) -> Path:
    for module, package in (("ncnn", "ncnn"), ("pnnx", "pnnx")):
        if not _have(module):
            raise Skipped(f"{package} not installed (pip install .[peers])")
    base = tmp / f"{model}_pnnx"
    base.mkdir(exist_ok=True)
    _child(["ncnn", model, ",".join(map(str, shape)), str(base / "model.pt")], sys.executable)
    return base / "model.ncnn.param"  # model.ncnn.bin beside it


def _convert_mnn(model: str, onnx_path: Path, shape: list[int], tmp: Path, peers_python: str) -> Path:
    if not (_have("MNN") and _have("_tools")):
        raise Skipped("mnn not installed (pip install .[peers])")
    path = tmp / f"{model}.mnn"
    _child(["mnn", str(onnx_path), str(path)], sys.executable)
    return path


_CONVERTERS = {"litert": _convert_litert, "ncnn": _convert_ncnn, "mnn": _convert_mnn}


# ---------------------------------------------------------------------------------------------
# worker: load a converted peer as callable(x) -> numpy, on `threads` threads

def load(engine: str, artifact: str, threads: int):
    if engine == PEERS["litert"]:
        from ai_edge_litert.interpreter import Interpreter

        interp = Interpreter(model_path=artifact, num_threads=threads)  # XNNPACK applied by default
        interp.allocate_tensors()
        src, dst = interp.get_input_details()[0]["index"], interp.get_output_details()[0]["index"]

        def run(x):
            interp.set_tensor(src, x)
            interp.invoke()
            return interp.get_tensor(dst)

        return run
    if engine == PEERS["ncnn"]:
        import ncnn

        net = ncnn.Net()
        net.opt.num_threads = threads  # set before loading: layers pick kernels at load time
        net.opt.use_fp16_storage = net.opt.use_fp16_packed = net.opt.use_fp16_arithmetic = False
        net.opt.use_bf16_storage = False
        if net.load_param(artifact) or net.load_model(str(Path(artifact).with_suffix(".bin"))):
            raise Skipped(f"ncnn could not load {artifact}")

        def run(x):
            with net.create_extractor() as ex:
                ex.input("in0", ncnn.Mat(x[0]))  # pnnx names the graph's input in0, its output out0
                _, out = ex.extract("out0")
                return np.array(out)[None]

        return run
    if engine == PEERS["mnn"]:
        import MNN

        rt = MNN.nn.create_runtime_manager(({"backend": "CPU", "numThread": threads, "precision": "normal"},))
        net = MNN.nn.load_module_from_file(artifact, [], [], runtime_manager=rt)
        F = MNN.expr

        def run(x):
            out = net.forward([F.const(x, list(x.shape), F.NCHW)])[0]
            if out.data_format == F.NC4HW4:
                out = F.convert(out, F.NCHW)
            return np.array(out.read())

        return run
    raise ValueError(f"unknown peer {engine!r}; valid: {', '.join(PEERS.values())}")


# ---------------------------------------------------------------------------------------------
# child: one conversion

def _child_main(argv: list[str]) -> None:
    kind = argv[0]
    if kind == "litert":  # in the converter's environment: torch + litert_torch, no mobilec needed
        import litert_torch
        import torch

        pt2, tflite = argv[1:3]
        program = torch.export.load(pt2)
        args = tuple(torch.zeros(a.shape) for a in program.example_inputs[0])
        litert_torch.convert(program.module(), args).export(tflite)
    elif kind == "ncnn":
        import pnnx
        import torch

        from mobilec.frontends.registry import create_model

        model, shape, pt = argv[1], [int(s) for s in argv[2].split(",")], argv[3]
        param = Path(pt).with_suffix(".ncnn.param")
        failure = None
        try:  # fp16=False: pnnx stores fp16 weights by default; the comparison is fp32 for everyone
            pnnx.export(_plain(create_model(model)), pt, (torch.zeros(shape),), fp16=False)
        except Exception as e:  # pnnx writes the ncnn files before its own Python post-step
            failure = e
        if not param.exists():
            raise SystemExit(f"pnnx wrote no {param}" + (f": {type(failure).__name__}: {failure}" if failure else ""))
        # ops pnnx could not lower (aten::..., pnnx.Expression: e.g. a pool whose kernel is computed
        # from the traced shape) stay in the param file, and ncnn cannot create those layers
        kinds = [line.split()[0] for line in param.read_text().splitlines()[2:] if line.strip()]
        left = sorted({k for k in kinds if "::" in k or k.startswith("pnnx.")})
        if left:
            raise SystemExit(f"error: pnnx left ops ncnn cannot run: {', '.join(left)}")
        if failure:
            raise failure
    elif kind == "mnn":
        import _tools  # MNN's converter, without the mnnconvert script's telemetry

        onnx_path, mnn_path = argv[1:3]
        _tools.mnnconvert(["mnnconvert", "-f", "ONNX", "--modelFile", onnx_path, "--MNNModel", mnn_path,
                           "--bizCode", "mobilec"])
        if not Path(mnn_path).exists():
            raise SystemExit(f"MNN's converter wrote no {mnn_path}")
    else:
        raise SystemExit(f"unknown converter {kind!r}; valid: {', '.join(PEERS)}")


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] != "convert":
        raise SystemExit(f"usage: {sys.argv[0]} convert {{{','.join(PEERS)}}} ARGS...")
    _child_main(sys.argv[2:])
