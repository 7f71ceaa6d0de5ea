"""`mobilec demo` end to end on a small model, piped as in a log: every step's line, unwrapped, and a
latency line that names the thread count and whose ratio is the two medians it prints."""

import os
import re
import subprocess
import sys

import pytest


@pytest.mark.build
def test_demo_prints_each_step_on_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mobilec", "demo", "--model", "mobilenet_v3_small_035",
                           "--workdir", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = {line[:2]: line for line in proc.stdout.splitlines() if re.match(r"\d\. ", line)}
    assert sorted(lines) == ["1.", "2.", "3.", "4."], proc.stdout
    assert lines["1."].startswith(f"1. exported {tmp_path / 'mobilenet_v3_small_035.onnx'}: onnxruntime vs PyTorch")
    two = lines["2."]  # one line however long: its end is there too
    assert "for x86_64-linux-gnu; fused:" in two and two.rstrip().endswith("searches for faster ones)"), two
    err = float(lines["3."].rsplit(" ", 1)[1])
    assert err < 1e-3, lines["3."]
    cores = len(os.sched_getaffinity(0))
    m = re.fullmatch(rf"4\. latency on {cores} thread{'s' * (cores > 1)}, median of 10 alternating blocks of 5 "
                     r"calls: mobilec ([\d.]+) ms \(([\d.]+)-([\d.]+)\), "
                     r"onnxruntime ([\d.]+) ms \(([\d.]+)-([\d.]+)\), ratio ([\d.]+)x \(untuned\)",
                     lines["4."].rstrip())
    assert m, lines["4."]
    mine, lo, hi, theirs, tlo, thi, ratio = (float(m.group(i)) for i in range(1, 8))
    assert 0 < lo <= mine <= hi and 0 < tlo <= theirs <= thi
    assert ratio == pytest.approx(mine / theirs, abs=0.005 + 0.05 / theirs + 0.05 * mine / theirs ** 2)
