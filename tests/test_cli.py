"""The CLI says what the API says: each verb end to end, and errors as one line naming the fix."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from mobilec.cli import main


def run(*args, ok=True):
    proc = subprocess.run([sys.executable, "-m", "mobilec", *args], capture_output=True, text=True)
    assert (proc.returncode == 0) == ok, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


@pytest.mark.structure
def test_models_table():
    out = run("models")
    assert "mobilenet_v3_large " in out and "219M" in out and "216.6M" in out and "lraspp_mobilenet_v3_large" in out


@pytest.mark.structure
def test_unknown_model_lists_the_valid_ones(tmp_path):
    out = run("export", "mobilenet_v9", "-o", str(tmp_path / "x.onnx"), ok=False)
    assert "unknown model 'mobilenet_v9'" in out and "mobilenet_v3_small" in out and "Traceback" not in out


def bench_table(out: str) -> dict[str, tuple[float, float, float, float]]:
    """`mobilec bench`'s table: name -> (median, min, max, ratio)."""
    rows = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip("│ ").split("│")]
        if len(cells) == 5 and cells[4].endswith("x") and cells[1][:1].isdigit():
            rows[cells[0]] = (float(cells[1]), float(cells[2]), float(cells[3]), float(cells[4][:-1]))
    return rows


@pytest.mark.build
def test_export_compile_inspect_run_bench(tmp_path):
    onnx_path, so = tmp_path / "s.onnx", tmp_path / "s.so"
    out = run("export", "mobilenet_v3_small_035", "-o", str(onnx_path), "--input-size", "96")
    assert "max abs error" in out and onnx_path.exists()
    out = run("inspect", str(onnx_path))
    assert "mobilec.se" in out
    out = run("compile", str(onnx_path), "--target", "host", "-o", str(so))
    # progress, one line per step (not a terminal), in order
    steps = [line.split(": ", 1)[1].split(" at ")[0] for line in out.splitlines() if line.startswith("compiling s.onnx: ")]
    assert steps == ["import", "canonicalize (1 of 5)", "fuse (2 of 5)", "lower (3 of 5)", "schedule (4 of 5)",
                     "finalize (5 of 5)", "code generation", "link"], out
    manifest = json.loads(so.with_suffix(".json").read_text())
    assert manifest["triple"] == "x86_64-linux-gnu" and manifest["fusion"]["totals"]["se"] == 9
    np.save(tmp_path / "x.npy", np.zeros((1, 3, 96, 96), np.float32))
    out = run("run", str(so), "--input", str(tmp_path / "x.npy"))
    assert "top-5" in out
    out = run("run", str(onnx_path), ok=False)  # the ONNX file by mistake, an s.json beside it
    assert f"{onnx_path}: an ONNX model, not a compiled library; compile it first: `mobilec compile" in out
    assert "sha256" not in out and "Traceback" not in out
    cores = len(os.sched_getaffinity(0))
    for threads, label in ((["--threads", "1"], "1 thread"), ([], f"{cores} thread" + "s" * (cores > 1))):
        out = run("bench", str(so), "--vs", str(onnx_path), "--warmup", "1", "--repeat", "4", *threads)
        rows = bench_table(out)
        assert list(rows) == [f"mobilec s.so ({label})", f"onnxruntime ({label})"], out
        mine, theirs = rows[f"mobilec s.so ({label})"], rows[f"onnxruntime ({label})"]
        assert mine[0] > 0 and theirs[0] > 0 and mine[1] <= mine[0] <= mine[2], out
        # the ratio is mobilec's median over onnxruntime's, as printed (2 decimals each)
        m, t = mine[0], theirs[0]
        assert mine[3] == pytest.approx(m / t, abs=0.005 + 0.005 / t + 0.005 * m / t ** 2), out
        assert theirs[3] == 1.0 and f"latency on {label}: median of 4 blocks of 1 call, engines alternating" in out


@pytest.mark.build
def test_segmentation_run_writes_a_mask(tmp_path, compiled):
    from PIL import Image

    res = compiled("lraspp_mobilenet_v3_small")
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "photo.jpg")
    out = run("run", str(res.library), "--image", str(tmp_path / "photo.jpg"), "--mask", str(tmp_path / "m.png"))
    assert "wrote" in out and Image.open(tmp_path / "m.png").size == (512, 512)
    (tmp_path / "notes.txt").write_text("not a photo")
    out = run("run", str(res.library), "--image", str(tmp_path / "notes.txt"), ok=False)
    assert f"--image {tmp_path / 'notes.txt'}: not an image pillow can read" in out and "Traceback" not in out


@pytest.mark.structure
def test_compile_errors_are_one_line(tmp_path):
    (tmp_path / "bad.onnx").write_bytes(b"garbage")
    out = run("compile", str(tmp_path / "bad.onnx"), "-o", str(tmp_path / "x.so"), ok=False)
    assert "bad.onnx" in out and "Traceback" not in out
    assert main(["compile", str(tmp_path / "bad.onnx"), "-o", str(tmp_path / "x.so"), "--target", "mips"]) == 2


@pytest.mark.structure
def test_internal_errors_are_not_passed_off_as_user_errors(monkeypatch, capsys):
    import mobilec.cli as cli

    def bug(args):
        raise KeyError("tasks")  # a bug inside mobilec, not something the user can fix

    monkeypatch.setattr(cli, "cmd_models", bug)
    assert main(["models"]) == 3
    err = capsys.readouterr().err
    assert "internal error" in err and "KeyError" in err and "MOBILEC_DEBUG=1" in err
    monkeypatch.setenv("MOBILEC_DEBUG", "1")
    with pytest.raises(KeyError):
        main(["models"])


@pytest.mark.structure
def test_bad_num_cores_is_a_user_error(tmp_path, capsys):
    (tmp_path / "m.onnx").write_bytes(b"x")
    assert main(["compile", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "m.so"), "--num-cores", "-3"]) == 2
    assert "--num-cores -3: must be 1 or more" in capsys.readouterr().err


@pytest.mark.structure
def test_every_mobilec_error_class_is_a_user_error():
    """The CLI prints UserErrors as one line and anything else as a bug: every error class a user can
    cause must be one."""
    import mobilec.compiler.artifacts
    import mobilec.compiler.importer
    import mobilec.targets
    import mobilec.frontends.registry
    import mobilec.frontends.weights
    import mobilec.rpc.emulate
    import mobilec.runtime
    import mobilec.schedules.database
    import mobilec.schedules.tuning
    from mobilec.errors import UserError

    modules = [mobilec.compiler.artifacts, mobilec.compiler.importer, mobilec.targets,
               mobilec.frontends.registry, mobilec.frontends.weights, mobilec.rpc.emulate, mobilec.runtime,
               mobilec.runtime.manifest, mobilec.schedules.database, mobilec.schedules.tuning]
    errors = {f"{m.__name__}.{name}": cls for m in modules for name, cls in vars(m).items()
              if isinstance(cls, type) and issubclass(cls, Exception) and cls.__module__ == m.__name__}
    assert len(errors) >= 12
    assert [name for name, cls in errors.items() if not issubclass(cls, UserError)] == []


@pytest.mark.structure
@pytest.mark.parametrize("verb", ["inspect", "compile", "tune"])
def test_a_missing_model_is_said_before_tvm_is_imported(verb, tmp_path):
    code = ("import sys; from mobilec.cli import main; "
            f"rc = main([{verb!r}, 'nosuch.onnx'] + {['-o', str(tmp_path / 'x.so')] if verb == 'compile' else []!r}"
            f" + {['--local'] if verb == 'tune' else []!r}); "
            "print(rc, 'tvm' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert proc.stdout.split() == ["2", "False"], proc.stdout + proc.stderr
    assert "nosuch.onnx: no such ONNX file" in proc.stderr
