import os

import numpy as np
import pytest
from hypothesis import settings

# CI replays the same fuzz cases every run (a failure there is reproducible, not luck); runs
# elsewhere draw new ones and keep finding new cases
settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    settings.load_profile("ci")

# the pass driver verifies the IR after every pass, not only after the last (hecc.pipeline)
os.environ.setdefault("HECC_VERIFY_EACH", "1")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
# the first 3,000 training and 1,000 test images of MNIST ship with the tests; HECC_MNIST names the
# full data set (an .npz with x_train, y_train, x_test, y_test) for the full-size checks
MNIST_SAMPLE = os.path.join(ROOT, "tests", "data", "mnist_sample.npz")
MNIST = os.environ.get("HECC_MNIST") or MNIST_SAMPLE


def assert_close(actual, expected, rel=1e-5, what=""):
    """max |actual - expected| <= rel * max(|expected|, tiny): relative to the output's scale."""
    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    scale = max(float(np.max(np.abs(expected))) if expected.size else 0.0, 1e-30)
    err = float(np.max(np.abs(actual - expected))) if expected.size else 0.0
    assert err <= rel * scale, f"{what}: max abs error {err:.3g} > {rel} x {scale:.3g}"
    return err / scale


@pytest.fixture
def run_cli(capsys):
    """Run the CLI in-process: returns (exit code, stdout, stderr)."""
    from hecc.cli import main

    def run(*argv):
        code = main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return code, out, err
    return run
