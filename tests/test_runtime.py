"""The thin runtime: load, run, benchmark, every bad input, no compiler library in the process."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

import mobilec.runtime as mr
from conftest import onnxruntime_outputs, seeded_input
from mobilec.runtime import ManifestError, RuntimeInputError

NAME = "mobilenet_v3_small_035"


@pytest.fixture(scope="module")
def small(compiled):
    return compiled(NAME)


@pytest.mark.build
def test_load_run_and_describe(small, exported):
    m = mr.load(small.library)
    assert m.inputs == [{"name": "input", "shape": [1, 3, 224, 224], "dtype": "float32"}]
    assert m.outputs[0]["shape"] == [1, 1000]
    x = seeded_input((1, 3, 224, 224))
    want = onnxruntime_outputs(exported(NAME), {"input": x})[0]
    np.testing.assert_allclose(m(x), want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    np.testing.assert_array_equal(m.run({"input": x})[0], m(x))
    b = m.benchmark(warmup=1, repeat=3)
    assert 0 < b["min_ms"] <= b["median_ms"] <= b["max_ms"]


@pytest.mark.build
def test_bad_inputs_name_expected_and_given(small):
    m = mr.load(small.library)
    x = seeded_input((1, 3, 224, 224))
    with pytest.raises(RuntimeInputError, match="expected dtype float32, given float64"):
        m(x.astype(np.float64))
    with pytest.raises(RuntimeInputError, match=r"expected rank 4 .* given rank 3"):
        m(x[0])
    with pytest.raises(RuntimeInputError, match=r"expected shape \(1, 3, 224, 224\), given \(1, 3, 200, 224\)"):
        m(x[:, :, :200])
    with pytest.raises(RuntimeInputError, match=r"the model takes \['input'\]"):
        m.run({"image": x})
    with pytest.raises(RuntimeInputError, match="numpy array"):
        m([1, 2, 3])


@pytest.mark.build
def test_manifest_checks(small, tmp_path):
    lib = tmp_path / "m.so"
    shutil.copy(small.library, lib)
    with pytest.raises(ManifestError, match="manifest not found"):
        mr.load(lib)
    shutil.copy(small.library.with_suffix(".json"), lib.with_suffix(".json"))
    mr.load(lib)  # with its manifest it loads
    with open(lib, "ab") as f:
        f.write(b"tampered")
    with pytest.raises(ManifestError, match="sha256"):
        mr.load(lib)
    lib.with_suffix(".json").write_text("{not json")
    with pytest.raises(ManifestError, match="not a mobilec manifest"):
        mr.load(lib)
    with pytest.raises(FileNotFoundError, match="no such compiled library"):
        mr.load(tmp_path / "missing.so")


THIN = r"""
import sys, json, numpy as np
import mobilec.runtime as mr
m = mr.load(sys.argv[1])
y = m(np.zeros(m.inputs[0]["shape"], dtype="float32"))
maps = open("/proc/self/maps").read()
print(json.dumps({"compiler": "libtvm_compiler" in maps, "runtime": "libtvm_runtime" in maps,
                  "modules": sorted(k for k in sys.modules if k.split(".")[0] in ("torch", "onnx", "onnxruntime")),
                  "shape": list(y.shape)}))
"""


@pytest.mark.build
def test_runtime_never_loads_the_compiler_torch_or_onnx(small):
    out = subprocess.run([sys.executable, "-c", THIN, str(small.library)], capture_output=True, text=True, check=True)
    facts = json.loads(out.stdout.strip().splitlines()[-1])
    assert facts == {"compiler": False, "runtime": True, "modules": [], "shape": [1, 1000]}, out.stderr


@pytest.mark.rpc
def test_remote_run_through_a_loopback_tracker(small):
    from mobilec.rpc import local

    x = seeded_input((1, 3, 224, 224))
    with local.tracker() as tracker, local.server(tracker, "host-cpu"):
        remote = mr.connect(tracker=tracker, key="host-cpu")
        m = remote.load(small.library)
        np.testing.assert_array_equal(m(x), mr.load(small.library)(x))
        b = m.benchmark(warmup=1, repeat=2)
        assert b["median_ms"] > 0
