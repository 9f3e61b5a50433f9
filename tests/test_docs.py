"""The README's commands run as written, and the pictures of a program are made."""
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET

import numpy as np

from conftest import EXAMPLES, ROOT

HECC = shutil.which("hecc") or os.path.join(os.path.dirname(sys.executable), "hecc")


def _block(marker):
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    start = text.index(marker)
    body = text[text.index("```sh\n", start) + 6:]
    return [line for line in body[: body.index("```")].splitlines() if line.strip()]


def test_readme_example_session_runs_as_written(tmp_path):
    os.symlink(EXAMPLES, tmp_path / "examples")
    for command in _block("<!-- example session -->"):
        assert command.startswith("hecc ")
        proc = subprocess.run([HECC] + command.split()[1:], cwd=tmp_path, capture_output=True, text=True)
        assert proc.returncode == 0, (command, proc.stderr)
        assert "Traceback" not in proc.stderr
    classes = np.load(tmp_path / "classes.npy")
    expected = np.load(os.path.join(EXAMPLES, "cryptonets_mnist", "expected.npy")).argmax(1)
    assert (classes == expected).mean() >= 0.98


def test_pictures_are_made_and_well_formed(tmp_path):
    art = tmp_path / "c.hecc"
    model = os.path.join(EXAMPLES, "cryptonets_mnist", "model.onnx")
    cal = os.path.join(EXAMPLES, "cryptonets_mnist", "input.npy")
    assert subprocess.run([HECC, "compile", model, "-o", art, "--calibration", cal, "-q"]).returncode == 0
    for stage in ("tensor", "final"):
        svg = tmp_path / f"{stage}.svg"
        proc = subprocess.run([HECC, "inspect", art, "--stage", stage, "--graph", svg], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        root = ET.parse(svg).getroot()
        texts = [t.text for t in root.iter("{http://www.w3.org/2000/svg}text")]
        if stage == "final":
            assert "linear" in texts and "square" in texts and "relinearize" in texts
            assert any(t and re.search(r"level 1\s+2\^26", t) for t in texts)
        else:
            assert "conv2d" in texts and "matmul" in texts
    svg = tmp_path / "slots.svg"
    proc = subprocess.run([HECC, "inspect", art, "--layout", "slots", "--graph", svg], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    texts = [t.text for t in ET.parse(svg).getroot().iter("{http://www.w3.org/2000/svg}text")]
    assert "rotate" in texts and "mul_plain" in texts and "linear" not in texts
    png = tmp_path / "levels.png"
    assert subprocess.run([HECC, "inspect", art, "--levels", png]).returncode == 0
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_compile_report_prints_the_table(tmp_path):
    model = os.path.join(EXAMPLES, "cryptonets_mnist", "model.onnx")
    cal = os.path.join(EXAMPLES, "cryptonets_mnist", "input.npy")
    proc = subprocess.run([HECC, "compile", model, "-o", tmp_path / "c.hecc", "--calibration", cal, "--report"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    for needle in ("lower-to-ckks", "model: 85,740 weights", "multiplicative depth: 2", "N=8192", "multiply_plain 105935",
                   "rescale 945", "evaluation keys:", "predicted precision", "predicted time per batch",
                   "predicted throughput", "slots layout: CKKS N=", "predicted time per input",
                   "1 input(s):", "picks slots", "4096 input(s):", "picks batch"):
        assert needle in proc.stdout, needle
    rotations = int(re.search(r"rotations per input: (\d+), Galois keys: (\d+)", proc.stdout).group(1))
    assert 10 < rotations < 60
    seconds = float(re.search(r"server evaluation ([\d.]+) s on one core", proc.stdout).group(1))
    assert 1 < seconds < 200


def test_calibrate_measures_and_stores_primitive_costs(tmp_path):
    art = tmp_path / "c.hecc"
    model = os.path.join(EXAMPLES, "cryptonets_mnist", "model.onnx")
    cal = os.path.join(EXAMPLES, "cryptonets_mnist", "input.npy")
    assert subprocess.run([HECC, "compile", model, "-o", art, "--calibration", cal, "-q"]).returncode == 0
    costs = tmp_path / "costs.json"
    costs.write_text("{not json")
    env = dict(os.environ, HECC_COSTS=str(costs))
    proc = subprocess.run([HECC, "calibrate", art], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "multiply_plain" in proc.stdout and "level 2:" in proc.stdout
    import json
    stored = json.loads(costs.read_text())
    (entry,) = stored.values()
    assert len(entry["relinearize"]) == 3 and all(t > 0 for t in entry["relinearize"])
