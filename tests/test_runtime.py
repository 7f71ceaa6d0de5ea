"""The thin runtime: load, run, benchmark, every bad input, no compiler library in the process."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import mobilec.runtime as mr
from helpers import onnxruntime_outputs, seeded_input
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
def test_calls_from_several_threads_each_get_their_own_input(small, exported):
    """The input tensors are kept between calls: calls from several Python threads at once, on
    different inputs, each get the output of their own input, and a non-contiguous input is read
    as its values."""
    from concurrent.futures import ThreadPoolExecutor

    m = mr.load(small.library)
    xs = [seeded_input((1, 3, 224, 224), seed=s) for s in range(4)]
    want = [onnxruntime_outputs(exported(NAME), {"input": x})[0] for x in xs]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda i: m(xs[i % 4]), range(16)))
    for i, out in enumerate(got):
        np.testing.assert_allclose(out, want[i % 4], rtol=1e-4, atol=1e-4 * np.abs(want[i % 4]).max())
    flipped = np.ascontiguousarray(xs[1][..., ::-1])[..., ::-1]  # a reversed view: not C-contiguous
    assert not flipped.flags.c_contiguous
    np.testing.assert_array_equal(m(flipped), m(xs[1]))


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


@pytest.mark.build
@pytest.mark.parametrize("edit", ["input shape", "output shape", "input name", "dtype"])
def test_a_manifest_edited_by_hand_is_refused_locally_and_remotely(small, tmp_path, edit):
    """The library carries its own inputs and outputs; the manifest's must be the same."""
    from mobilec.rpc import local

    lib = tmp_path / "m.so"
    shutil.copy(small.library, lib)
    manifest = json.loads(small.library.with_suffix(".json").read_text())
    field, key, value = {"input shape": ("inputs", "shape", [1, 3, 256, 256]),
                         "output shape": ("outputs", "shape", [1, 10]),
                         "input name": ("inputs", "name", "image"),
                         "dtype": ("inputs", "dtype", "float16")}[edit]
    manifest[field][0][key] = value
    lib.with_suffix(".json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match="the manifest was edited after compiling") as e:
        mr.load(lib)
    assert "224x224" in str(e.value) and "1000" in str(e.value)  # what the library was compiled for
    with local.tracker() as tracker, local.server(tracker, "host-cpu"):
        with pytest.raises(ManifestError, match="the manifest was edited after compiling"):
            mr.connect(tracker=tracker, key="host-cpu").load(lib)


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


@pytest.mark.build
def test_loads_exactly_the_bytes_it_hashed(small, tmp_path, monkeypatch):
    lib = tmp_path / "m.so"
    shutil.copy(small.library, lib)
    shutil.copy(small.library.with_suffix(".json"), lib.with_suffix(".json"))
    real, seen = mr._load_library, {}

    def swap_then_load(path):  # someone replaces the file between the check and the load
        lib.write_bytes(b"\x7fELF" + b"\0" * 100)
        seen.update(path=path, mode=os.stat(path).st_mode & 0o777,
                    dir_mode=os.stat(os.path.dirname(path)).st_mode & 0o777)
        return real(path)

    monkeypatch.setattr(mr, "_load_library", swap_then_load)
    m = mr.load(lib)
    x = seeded_input((1, 3, 224, 224))
    np.testing.assert_array_equal(m(x), mr.load(small.library)(x))  # the verified library runs, not the swap
    assert seen["path"] != str(lib) and seen["mode"] == 0o600 and seen["dir_mode"] == 0o700
    assert not os.path.exists(seen["path"])  # the private copy is gone once loaded
    with pytest.raises(ManifestError, match="sha256"):
        mr.load(lib)  # and the swapped file itself is refused


@pytest.mark.build
def test_onnx_file_given_by_mistake_is_named(small, exported, tmp_path):
    onnx_path = tmp_path / "s.onnx"
    shutil.copy(exported(NAME), onnx_path)
    shutil.copy(small.library.with_suffix(".json"), tmp_path / "s.json")  # an older s.json beside it
    with pytest.raises(ManifestError, match=r"s.onnx: an ONNX model, not a compiled library; compile it first: "
                                            r"`mobilec compile .*s.onnx -o .*s.so`"):
        mr.load(onnx_path)
    (tmp_path / "notes.so").write_text("hello")
    with pytest.raises(ManifestError, match="notes.so: not a compiled library"):
        mr.load(tmp_path / "notes.so")


@pytest.mark.build
def test_nan_and_inf_inputs_are_refused_unless_asked(small):
    x = seeded_input((1, 3, 224, 224))
    x[0, 1, 5, 7] = np.nan
    x[0, 2, 0, 0] = np.inf
    x[0, 2, 0, 1] = -np.inf
    with pytest.raises(RuntimeInputError, match=r"input 'input' holds non-finite values: 1 NaN, 2 Inf, first at "
                                                r"index \(0, 1, 5, 7\).*check_finite=False \(results for "
                                                r"non-finite inputs are undefined\)"):
        mr.load(small.library)(x)
    y = mr.load(small.library, check_finite=False)(x)  # runs; what it gives is undefined
    assert y.shape == (1, 1000)
    big = np.full((1, 3, 224, 224), 3e38, np.float32)  # the sum overflows, every value is finite
    assert mr.load(small.library)(big).shape == (1, 1000)


@pytest.mark.build
def test_scalar_graph_inputs_keep_their_rank(tmp_path):
    from onnx import helper

    from graphs import C, HW, model
    from mobilec.compiler import compile_model

    proto = model([helper.make_node("Clip", ["input", "lo", "hi"], ["output"])], [],
                  inputs=(("input", (1, C, HW, HW)), ("lo", ()), ("hi", ())))
    m = mr.load(compile_model(proto, tmp_path / "clip.so").library)
    assert [i["shape"] for i in m.inputs] == [[1, C, HW, HW], [], []]
    feeds = {"input": seeded_input((1, C, HW, HW)), "lo": np.array(-0.5, np.float32),
             "hi": np.array(0.7, np.float32)}
    want = onnxruntime_outputs(proto.SerializeToString(), feeds)[0]
    np.testing.assert_allclose(m.run(feeds)[0], want, rtol=1e-6)
    with pytest.raises(RuntimeInputError, match=r"input 'lo': expected rank 0 shape \(\), given rank 1"):
        m.run({**feeds, "lo": np.array([-0.5], np.float32)})


@pytest.mark.build
def test_benchmark_arguments_are_checked(small):
    m = mr.load(small.library)
    with pytest.raises(ValueError, match=r"benchmark\(repeat=0\): give a whole number >= 1"):
        m.benchmark(repeat=0)
    with pytest.raises(ValueError, match=r"benchmark\(warmup=-1\)"):
        m.benchmark(warmup=-1)


COMPILER_AFTER_LOAD = r"""
import json, os, subprocess, sys
import mobilec.runtime as mr
mr.load(sys.argv[1])
leaked = os.environ.get("TVM_USE_RUNTIME_LIB")
child = subprocess.run([sys.executable, "-c", "import mobilec.compiler; print('compiler ok')"],
                       capture_output=True, text=True)
try:
    import mobilec.compiler
    same = "imported"
except ImportError as e:
    same = f"{type(e).__name__}: {e}"
print(json.dumps({"leaked": leaked, "child": child.stdout.strip() or child.stderr.strip().splitlines()[-1],
                  "same": same}))
"""


@pytest.mark.build
def test_loading_a_model_leaves_the_compiler_to_children_and_says_why_not_here(small):
    env = {k: v for k, v in os.environ.items() if k != "TVM_USE_RUNTIME_LIB"}
    out = subprocess.run([sys.executable, "-c", COMPILER_AFTER_LOAD, str(small.library)], capture_output=True,
                         text=True, env=env)
    assert out.returncode == 0, out.stderr
    facts = json.loads(out.stdout.strip().splitlines()[-1])
    assert facts["leaked"] is None and facts["child"] == "compiler ok", facts
    assert facts["same"].startswith("CompilerUnavailableError: cannot import mobilec.compiler: mobilec.runtime "
                                    "loaded a model first"), facts
    assert "import mobilec.compiler before loading models, or compile in a separate process" in facts["same"]


@pytest.mark.rpc
def test_wrong_architecture_library_on_a_device_is_named(tmp_path):
    from graphs import conv, model
    from mobilec.compiler import CompileConfig, compile_model
    from mobilec.rpc import local

    nodes, inits = conv("input", "output")
    arm = compile_model(model(nodes, inits), tmp_path / "arm.so", CompileConfig(target="aarch64-linux-gnu")).library
    with local.tracker() as tracker, local.server(tracker, "x86-box"):
        with pytest.raises(mr.RemoteError, match=r"could not load arm.so, built for aarch64 \(aarch64-linux-gnu\): "
                                                 r"is the device an aarch64 machine\?"):
            mr.connect(tracker=tracker, key="x86-box").load(arm)
