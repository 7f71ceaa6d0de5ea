"""mobilec: the repository root is the ``mobilec`` package; its folders are its subpackages.

``pip install .``        the thin runtime only (TVM + numpy): load and run compiled models
``pip install .[all]``   everything: PyTorch models, ONNX export, compiler, RPC, tuning, tests
"""

from setuptools import setup

SUBPACKAGES = ["adapt", "compiler", "compiler.fusions", "frontends", "schedules", "schedules.kernels", "rpc", "runtime"]

RUNTIME = [
    "numpy>=1.26",
    "apache-tvm==0.27.0.post1",
    "apache-tvm-ffi==0.1.14.post1",  # 0.1.15.x segfaults in tvm.ir.save_json (MetaSchedule)
    "rich==15.0.0",  # the tables of `mobilec run` / `bench`
]
ALL = [
    "torch==2.13.0",  # CPU build from local disk; unpinned torch pulls a multi-GB CUDA build
    "onnx==1.23.2",
    "onnxruntime==1.32.0",
    "onnxscript==0.7.2",
    "xgboost-cpu==3.2.0",  # MetaSchedule's cost model; the -cpu wheel avoids the CUDA NCCL download
    "psutil==7.2.2",
    "cloudpickle==3.1.3",
    "tornado==6.6.1",
    "pillow==13.0.0",
    "matplotlib==3.11.2",  # the tuning plot
    "pytest==9.2.0",
]
PEERS = [  # benchmarks/compare.py's phone runtimes; litert-torch needs its own venv (benchmarks/peers.py)
    "ai-edge-litert==2.3.0",
    "ncnn==1.0.20261020",
    "pnnx==20261020",  # PyTorch -> ncnn; needs torch (from .[all])
    "mnn==3.6.1",
]

ZOO = [  # benchmarks/zoo.py's models; install with $(.ci/torch-index) so torchvision is the CPU build
    "timm==1.0.31",
    "torchvision==0.28.0",  # the release built for torch 2.13.0
]

setup(
    name="mobilec",
    version="0.1.0",
    description="MobileNet-class vision models from PyTorch to a fast native library on ARM phone CPUs, on Apache TVM",
    python_requires=">=3.10",
    packages=["mobilec"] + [f"mobilec.{p}" for p in SUBPACKAGES],
    package_dir={"mobilec": "."} | {f"mobilec.{p}": p.replace(".", "/") for p in SUBPACKAGES},
    package_data={"mobilec.schedules": ["kernel_timer.cc"]},  # built for each target by `mobilec tune`
    install_requires=RUNTIME,
    extras_require={"all": ALL, "runtime": [], "peers": PEERS, "zoo": ZOO},
    entry_points={"console_scripts": ["mobilec=mobilec.cli:main"]},
)
