"""`mobilec tune` and `mobilec tune-merge` from the command line (in this process, through
``cli.main``), with tiny graphs and budgets: what a run prints, what it leaves behind, how it
counts its budget, how it fails, and what a database it wrote does to a build."""

from __future__ import annotations

import re
import shutil
import tempfile

import onnx
import pytest
import tvm_ffi

from helpers import seed_of
from graphs import C, conv, model
from mobilec.cli import main
from mobilec.compiler import TRIPLES, CompileConfig, compile_model, resolve
from mobilec.targets import host_triple
from mobilec.compiler.verdict import VERDICTS, Verdict, model_key, record
from mobilec.schedules import open_database
from mobilec.schedules.database import CONFIRMED, FILES, DatabaseError

pytestmark = [pytest.mark.tuning]


def pw_dw():
    """A pointwise conv (IHWO-packed weights) then a depthwise conv: two tasks."""
    n1, i1 = conv("input", "c1", k=1)
    n2, i2 = conv("c1", "output", group=C, seed=1)
    return model(n1 + n2, i1 + i2)


def host_db() -> str:
    host = resolve("host")
    return f"{host.triple}-{host.cpu}"


def searched_records(db_dir) -> list:
    """Valid records the search made: decisions other than the default schedule's."""
    from mobilec.schedules.defaults import decisions

    return [r for r in open_database(db_dir).get_all_tuning_records()
            if min(float(t) for t in r.run_secs) < 1e9 and decisions(r.trace) != seed_of(r)]


def searched(db_dir) -> int:
    """Search trials: valid records, less the one seeded default schedule per kernel."""
    from mobilec.schedules.defaults import decisions

    valid = [r for r in open_database(db_dir).get_all_tuning_records() if min(float(t) for t in r.run_secs) < 1e9]
    seeded = {tvm_ffi.structural_hash(r.workload.mod) for r in valid if decisions(r.trace) == seed_of(r)}
    return len(valid) - len(seeded)


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("tune") / "pw_dw.onnx"
    onnx.save(pw_dw(), path)
    return path


@pytest.fixture(scope="module")
def tuned(tmp_path_factory, onnx_file):
    """A database holding only the seeded default schedules (a run interrupted while seeding),
    then `mobilec tune --local` run on it with its candidates built in a private temporary
    directory. Returns (database dir, stdout, private temp dir, return code)."""
    from tvm.s_tir.meta_schedule.relax_integration import extract_tasks

    from mobilec.compiler.importer import import_onnx
    from mobilec.compiler.pipeline import PipelineOptions, run_until
    from mobilec.targets import export_function
    from mobilec.schedules.builder import PooledBuilder
    from mobilec.schedules.tuning import TuneOptions, _runner, seed_with_defaults, select_tasks

    base = tmp_path_factory.mktemp("tuned")
    private = base / "tmp"
    private.mkdir()
    host = resolve("host")
    target = host.tvm_target()
    db_dir = base / "db" / host_db()
    mod = run_until(import_onnx(pw_dw()).mod, target, PipelineOptions(), "lower")
    tasks = select_tasks(extract_tasks(mod, target), all_tasks=False)
    work = tempfile.mkdtemp(dir=private)
    builder = PooledBuilder(export_function(host.triple), work, limit_s=TuneOptions().build_limit)
    try:
        seeded = seed_with_defaults(tasks, target, open_database(db_dir), builder, _runner(TuneOptions()))
    finally:
        builder.close()
    shutil.rmtree(work)
    assert seeded == 2 and searched(db_dir) == 0

    saved = tempfile.tempdir
    tempfile.tempdir = str(private)  # what the run creates in "the" temporary directory lands here
    try:
        with pytest.MonkeyPatch.context() as mp:
            import io
            import sys

            out = io.StringIO()
            mp.setattr(sys, "stdout", out)  # not a terminal: plain progress lines
            rc = main(["tune", str(onnx_file), "--local", "--trials", "2", "--per-round", "1",
                       "--db", str(base / "db")])
    finally:
        tempfile.tempdir = saved
    return db_dir, out.getvalue(), private, rc


def test_seeded_records_do_not_spend_the_budget(tuned, onnx_file, capsys):
    db_dir, out, _, rc = tuned
    # the seeds were there already; the budget of 2 search trials was still measured
    assert rc == 0, out
    assert "nothing to measure" not in out and "tuned 2 candidates" in out
    assert searched(db_dir) == 2
    # ... and now it is spent: a rerun measures nothing
    assert main(["tune", str(onnx_file), "--local", "--trials", "2", "--per-round", "1",
                 "--db", str(db_dir.parent)]) == 0
    assert "nothing to measure" in capsys.readouterr().out


def test_tune_names_kernels_readably_and_prints_plain_lines_off_a_terminal(tuned):
    _, out, _, _ = tuned
    assert f"pw 10x10 {C}->{C}" in out and f"dw3x3 10x10 {C}" in out
    assert "fused_relax" not in out
    rounds = [line for line in out.splitlines() if line.startswith("round ")]
    assert len(rounds) == 2, out  # one line per round, no live table reprinted into the log
    assert "tuning:" not in out  # the live table's title


@pytest.mark.build
def test_search_mutates_the_default_schedules_tiles_and_its_schedules_match(tuned, tmp_path):
    """The search explores the default schedule's own space: its records make the same sampling
    instructions with other decisions (tile sizes), and a build from them alone (through
    MetaSchedule's postprocessors, replayed by the database) matches onnxruntime."""
    from tvm.s_tir import meta_schedule as ms

    from graphs import assert_matches_onnxruntime
    from mobilec.schedules.defaults import decisions

    db_dir, _, _, _ = tuned
    found = searched_records(db_dir)
    assert found, "no record from the search"
    for r in found:
        seed = seed_of(r)
        mine = decisions(r.trace)
        assert seed and len(mine) == len(seed) and mine != seed, (mine, seed)
        assert all(isinstance(d, list) and len(d) == 2 for d in mine)  # tile sizes: (outer, inner)
    only = tmp_path / "searched" / host_db()
    db = open_database(only)
    for r in found:
        db.commit_tuning_record(ms.database.TuningRecord(r.trace, db.commit_workload(r.workload.mod), r.run_secs,
                                                         r.target, r.args_info))
    res = assert_matches_onnxruntime(pw_dw(), tmp_path, tuning_db=str(tmp_path / "searched"), force_tuning_db=True)
    assert res.manifest.tuned_kernels == len({tvm_ffi.structural_hash(r.workload.mod) for r in found})


def test_tune_ends_timing_the_model_with_and_without_the_database(tuned):
    db_dir, out, _, _ = tuned
    line = next(line for line in out.splitlines() if line.startswith("whole model: "))
    assert "this machine" in line and "with the database" in line and "without" in line, out
    assert "compile --tuning-db applies it" in out or "will not apply it" in out
    assert (db_dir / VERDICTS).exists()


@pytest.mark.build
def test_database_measured_slower_is_not_applied_unless_forced(tuned, tmp_path, caplog):
    from mobilec.compiler.importer import import_onnx

    db_dir, _, _, _ = tuned
    db = tmp_path / "db"
    shutil.copytree(db_dir, db, ignore=shutil.ignore_patterns("logs", "*.png"))
    key = model_key(import_onnx(pw_dw()), "NHWC", True, True)
    record(db, Verdict("pw_dw.onnx", key, untuned_ms=1.0, tuned_ms=1.5, device="this machine", threads=1,
                       measured_at="now"))
    res = compile_model(pw_dw(), tmp_path / "slow.so", CompileConfig(tuning_db=str(db)))
    assert res.manifest.tuned_kernels == 0 and res.manifest.tuning_db is None
    assert len(res.warnings) == 1 and "not applied" in res.warnings[0] and "1.50x" in res.warnings[0]
    assert "--force-tuning-db" in res.warnings[0] and res.warnings[0] in caplog.text
    forced = compile_model(pw_dw(), tmp_path / "forced.so", CompileConfig(tuning_db=str(db), force_tuning_db=True))
    assert forced.manifest.tuned_kernels == 2 and not forced.warnings
    # another model, or the same one built with other flags, has no verdict: applied as before
    other = compile_model(pw_dw(), tmp_path / "nchw.so", CompileConfig(tuning_db=str(db), layout="NCHW"))
    assert not any("not applied" in w for w in other.warnings)
    # a faster (or tied) verdict applies it
    record(db, Verdict("pw_dw.onnx", key, untuned_ms=1.0, tuned_ms=1.01, device="this machine", threads=1,
                       measured_at="now"))
    assert compile_model(pw_dw(), tmp_path / "tie.so", CompileConfig(tuning_db=str(db))).manifest.tuned_kernels == 2


def test_sigterm_mid_run_cleans_up_and_keeps_the_database(tmp_path, onnx_file):
    """SIGTERM is Ctrl-C: the run unwinds, its private folder goes, the database stays whole."""
    import os
    import signal
    import subprocess
    import sys
    import time

    private = tmp_path / "tmp"
    private.mkdir()
    db = tmp_path / "db"
    proc = subprocess.Popen([sys.executable, "-m", "mobilec", "tune", str(onnx_file), "--local", "--trials", "400",
                             "--per-round", "4", "--db", str(db)], env={**os.environ, "TMPDIR": str(private)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    records = db / host_db() / FILES[1]
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if records.exists() and sum(1 for _ in open(records)) >= 6:  # seeded, and searching
            break
        time.sleep(0.5)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    if proc.returncode != 128 + signal.SIGTERM:  # the whole stderr: where it crashed, if it did
        pytest.fail(f"exit status {proc.returncode}, expected {128 + signal.SIGTERM}\nstdout:\n{out}\nstderr:\n{err}")
    assert "stopped by signal" in err
    assert not [p.name for p in private.iterdir() if p.name.startswith("mobilec-")]
    assert len(open_database(db / host_db())) >= 6  # every finished round kept, and readable


def test_time_budget_ends_the_search_after_the_round_that_passes_it(tmp_path, capsys):
    """--minutes: the round running at the deadline finishes and is kept, no other starts, and the
    run exits 0 saying so (a rerun continues the budget like any interrupted run)."""
    one = tmp_path / "one.onnx"
    onnx.save(model(*conv("input", "output", k=1)), one)
    db = tmp_path / "db"
    args = ["tune", str(one), "--local", "--trials", "50", "--per-round", "2", "--db", str(db), "--no-verify"]
    assert main(args + ["--minutes", "0.001"]) == 0
    out = capsys.readouterr().out
    assert "tuned 2 candidates" in out and "stopped at the time budget of 0.001 minutes with 2 of 50 trials" in out
    assert searched(db / host_db()) == 2
    assert main(args + ["--minutes", "0"]) == 2
    assert "time budget must be positive" in capsys.readouterr().err


def test_a_task_converges_when_its_best_stops_moving():
    """A task's best (the faster of its default and its searched candidates) not improved by more
    than ``improved`` over ``patience`` trials: converged; an improvement starts the count again."""
    from mobilec.schedules.progress import Progress, TaskStats

    p = Progress([TaskStats("a", 1.0, 100, task="a"), TaskStats("b", 2.0, 100, task="b")], budget=200, patience=4,
                 improved=0.01)
    p.start_from({"a": 1.0, "b": 1.0})
    p.record(0, [0.995, 1.2])   # within 1% of the default: no improvement
    p.record(0, [0.9, None])    # 10% better: the count starts again
    assert p.tasks[0].stale == 0 and not p.tasks[0].converged
    p.record(0, [0.899, 0.95])
    p.record(0, [0.91, 0.93])
    assert p.tasks[0].stale == 4 and p.tasks[0].converged and not p.all_converged()
    p.record(1, [1.5] * 4)
    assert p.tasks[1].converged and p.all_converged()
    assert p.within(0.10) == (0, p.elapsed[0])  # the defaults' 3.0 ms is within 10% of the final 2.899
    assert p.within(0.01) == (4, p.elapsed[2])  # 2.9 ms after the second round
    assert "converged (best unchanged for 4 trials)" in p.line(1)


@pytest.mark.build
def test_a_time_budget_alone_runs_until_every_task_converges(tmp_path, capsys):
    """--minutes without --trials: no trial limit; tasks stop as they converge, and a run whose tasks
    all have ends before its time budget, saying so."""
    one = tmp_path / "one.onnx"
    onnx.save(pw_dw(), one)
    assert main(["tune", str(one), "--local", "--minutes", "10", "--per-round", "2", "--db", str(tmp_path / "db"),
                 "--no-verify"]) == 0
    out = capsys.readouterr().out
    assert "every task converged (its best unchanged by more than 1% for 6 trials) after" in out, out
    assert "before the time budget of 10 minutes" in out and "stopped at the time budget" not in out
    rounds = [line for line in out.splitlines() if line.startswith("round ")]
    assert rounds and re.search(r"all tasks \d+ trials, estimated", rounds[-1]), rounds  # no trial limit to show


def test_tune_leaves_no_candidates_in_the_temporary_directory(tuned):
    _, _, private, _ = tuned
    assert not [p.name for p in private.iterdir() if p.name.startswith("mobilec-")]


def test_local_refuses_a_target_this_machine_cannot_run(tmp_path, onnx_file, capsys):
    host_arch = TRIPLES[host_triple()].arch
    other = next(t for t, p in TRIPLES.items() if p.arch != host_arch and not t.endswith("android"))
    rc = main(["tune", str(onnx_file), "--local", "--target", other, "--db", str(tmp_path / "db")])
    err = capsys.readouterr().err
    assert rc == 2 and "--local" in err and f"cannot run {other} code" in err and "--tracker" in err
    assert not (tmp_path / "db").exists()  # refused before any work


@pytest.mark.rpc
def test_every_candidate_failing_exits_non_zero_with_the_first_error(tmp_path, onnx_file, capsys):
    """aarch64 code measured on an x86 device (a wrong --key): nothing can load it."""
    from mobilec.rpc import local

    other = "aarch64-linux-gnu" if host_triple() != "aarch64-linux-gnu" else "x86_64-linux-gnu"
    one = tmp_path / "one.onnx"
    onnx.save(model(*conv("input", "output", k=1)), one)
    with local.tracker() as tracker, local.server(tracker, "host-cpu"):
        rc = main(["tune", str(one), "--tracker", tracker, "--key", "host-cpu", "--target", other,
                   "--trials", "2", "--per-round", "1", "--db", str(tmp_path / "db")])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "candidates failed" in err and "Failed to load dynamic shared library" in err
    assert "stopped answering" not in err  # the device answered: it is not lost


def _corrupt(src, dst):
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("logs", "*.png"))
    with open(dst / FILES[1], "a") as f:
        f.write('[0, [[["GetSBlock"\n')  # a write cut short
    return sum(1 for line in open(dst / FILES[1]) if line.strip())


def test_tune_merge_checks_every_source_before_writing(tuned, tmp_path, capsys):
    db_dir, _, _, _ = tuned
    n = len(open_database(db_dir))
    assert main(["tune-merge", str(db_dir), str(db_dir), "-o", str(tmp_path / "merged")]) == 0
    assert f"merged {2 * n} records" in capsys.readouterr().out
    assert len(open_database(tmp_path / "merged")) == 2 * n
    before = {f: (tmp_path / "merged" / f).read_bytes() for f in FILES}

    line = _corrupt(db_dir, tmp_path / "bad")
    for out in (tmp_path / "new", tmp_path / "merged"):
        rc = main(["tune-merge", str(db_dir), str(tmp_path / "bad"), "-o", str(out)])
        err = capsys.readouterr().err
        assert rc == 2 and f"{tmp_path / 'bad' / FILES[1]}:{line}" in err and "tune-merge" in err
    assert not (tmp_path / "new").exists()  # no empty database left behind
    assert {f: (tmp_path / "merged" / f).read_bytes() for f in FILES} == before  # untouched
    assert not [p for p in tmp_path.iterdir() if ".merge-" in p.name]


@pytest.mark.build
def test_corrupt_tuning_db_is_one_clear_error(tuned, tmp_path):
    db_dir, _, _, _ = tuned
    line = _corrupt(db_dir, tmp_path / "bad")
    with pytest.raises(DatabaseError, match=rf"{FILES[1]}:{line}: not a JSON line .*delete that line"):
        compile_model(pw_dw(), tmp_path / "m.so", CompileConfig(tuning_db=str(tmp_path / "bad")))


@pytest.mark.build
def test_tuning_db_that_matches_no_kernel_warns_with_the_reason(tuned, tmp_path, caplog):
    import json

    db_dir, _, _, _ = tuned
    pw = model(*conv("input", "output", k=1), inputs=(("input", (1, C, 12, 12)),), output=("output", (1, C, 12, 12)))
    ok = compile_model(pw_dw(), tmp_path / "ok.so", CompileConfig(tuning_db=str(db_dir), force_tuning_db=True))
    assert ok.manifest.tuned_kernels == 2 and not ok.warnings
    # another input shape, other kernels (other flags too, where they change a kernel: --no-default-schedules
    # leaves weights unpacked, on AVX2; AVX-512 packs no 8-channel weights, so there it changes nothing)
    res = compile_model(pw, tmp_path / "shape.so", CompileConfig(tuning_db=str(db_dir)))
    assert res.manifest.tuned_kernels == 0
    assert len(res.warnings) == 1 and "0 of 3 kernels matched" in res.warnings[0]  # the conv, 2 transposes
    assert "another model or input shape" in res.warnings[0] and res.warnings[0] in caplog.text
    # the same kernels, measured on another device: never applied, and said so
    other = tmp_path / "other"
    shutil.copytree(db_dir, other, ignore=shutil.ignore_patterns("logs", "*.png", VERDICTS))
    mine = resolve("host").target
    # the search's records, and its confirmed winners where the search beat a default (else nothing to confirm)
    records = [path for path in (other / FILES[1], other / CONFIRMED / FILES[1]) if path.is_file()]
    for path in records:
        lines = [json.loads(line) for line in open(path) if line.strip()]
        for rec in lines:
            rec[1][2].update({"mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a76"})
        path.write_text("".join(json.dumps(rec) + "\n" for rec in lines))
    res = compile_model(pw_dw(), tmp_path / "other.so", CompileConfig(tuning_db=str(other)))
    assert res.manifest.tuned_kernels == 0
    assert "tuned for aarch64-linux-gnu (cpu cortex-a76)" in res.warnings[0]
    assert f"this build is for {mine['mtriple']} (cpu {mine['mcpu']})" in res.warnings[0]
