"""`compile -o` never leaves a broken library, a stale manifest, or a clobbered input."""

import json

import pytest

import mobilec.runtime as mr
from graphs import conv, model
from mobilec.cli import main
from mobilec.compiler import compile_model, resolve
from mobilec.compiler import build as build_module
from mobilec.compiler.artifacts import OutputError


def tiny(seed=0):
    n, i = conv("input", "output", seed=seed)
    return model(n, i)


@pytest.mark.structure
def test_outputs_that_would_clobber_are_refused(tmp_path, capsys):
    src = tmp_path / "m.onnx"
    src.write_bytes(tiny().SerializeToString())
    before = src.read_bytes()
    for bad, why in ((src, "an ONNX model's name"), (tmp_path / "m.json", "the manifest's name"),
                     (tmp_path, "is a directory")):
        with pytest.raises(OutputError, match=why):
            compile_model(src, bad)
    assert main(["compile", str(src), "-o", str(src)]) == 2
    assert "-o" in capsys.readouterr().err and src.read_bytes() == before
    # an input named like a library is not overwritten either
    lib_named = tmp_path / "model.so"
    lib_named.write_bytes(before)
    with pytest.raises(OutputError, match="would overwrite the input model"):
        compile_model(lib_named, lib_named)
    assert lib_named.read_bytes() == before


@pytest.mark.build
def test_interrupted_link_keeps_the_previous_good_pair(tmp_path, monkeypatch):
    out = tmp_path / "m.so"
    good = compile_model(tiny(), out)
    old_lib, old_json = out.read_bytes(), out.with_suffix(".json").read_text()

    def linker_killed(path, *args, **kwargs):  # Ctrl-C while the C++ driver is writing the library
        with open(path, "wb") as f:
            f.write(b"\x7fELF half a lib")
        raise KeyboardInterrupt

    real = build_module.export_function
    monkeypatch.setattr(build_module, "export_function", lambda triple: linker_killed)
    with pytest.raises(KeyboardInterrupt):
        compile_model(tiny(seed=1), out)
    assert out.read_bytes() == old_lib and out.with_suffix(".json").read_text() == old_json
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.so"], "temporary files left behind"
    mr.load(out)  # still the good, verified library
    assert json.loads(old_json)["sha256"] == good.manifest.sha256

    monkeypatch.setattr(build_module, "export_function", real)
    again = compile_model(tiny(seed=1), out)  # a finished compile replaces both
    assert again.manifest.sha256 != good.manifest.sha256
    assert json.loads(out.with_suffix(".json").read_text())["sha256"] == again.manifest.sha256
    mr.load(out)


@pytest.mark.build
def test_a_library_this_cpu_cannot_run_is_refused_at_load(tmp_path):
    res = compile_model(tiny(), tmp_path / "m.so")
    assert res.manifest.cpu_needs == list(resolve("host").needs)
    manifest = json.loads((tmp_path / "m.json").read_text())
    manifest["cpu_needs"] = ["avx10_9"]  # as if built for a CPU this one is not
    (tmp_path / "m.json").write_text(json.dumps(manifest))
    with pytest.raises(mr.ManifestError, match="needs avx10_9; this machine's CPU lacks it.*--target host"):
        mr.load(tmp_path / "m.so")
