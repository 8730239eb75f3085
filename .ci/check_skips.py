"""Fail CI when a test was skipped for a reason CI does not expect.

Usage: ``python .ci/check_skips.py JUNIT_XML`` (the report of ``pytest --junitxml``). Expected
skips: tests that need a CUDA device (CI has none), scikit-learn's estimator checks for optional
inputs (array API, pandas), the bitwise comparison with recorded kernel outputs on another machine
(printed, so it is seen), and, where numba is not installed (CI's second run), the tests of the
numba backend. Any other skip (a backend that did not load, a missing test dependency) fails,
so a green run means the tests ran.
"""

from __future__ import annotations

import importlib.util
import re
import sys
import xml.etree.ElementTree as ET
from collections import Counter

EXPECTED = {
    "needs a CUDA device": re.compile(r"needs a CUDA device"),
    "scikit-learn estimator check for optional inputs": re.compile(
        r"^(SCIPY_ARRAY_API is not set: not checking array_api input"
        r"|pandas is not installed: not checking estimators for pandas objects\.)$"
    ),
    # tests/test_kernels_recorded.py compares bits only on the CPU and versions it was recorded
    # with (compiled code and BLAS round differently elsewhere); reported, not failed: another
    # numba release is no defect of the code. Remove this line to make CI insist.
    "kernel outputs recorded on another CPU or versions": re.compile(
        r"^kernel outputs recorded on "
    ),
}
NO_NUMBA = re.compile(r"^(could not import 'numba'|numba is not installed)")


def main(path: str) -> int:
    numba = importlib.util.find_spec("numba") is not None
    counts: Counter[str] = Counter()
    unexpected = []
    for case in ET.parse(path).getroot().iter("testcase"):
        skipped = case.find("skipped")
        if skipped is None:
            continue
        message = skipped.get("message", "").removeprefix("Skipped: ")
        kind = next((k for k, pattern in EXPECTED.items() if pattern.search(message)), None)
        if kind is None and not numba and NO_NUMBA.search(message):
            kind = "numba not installed"
        if kind is None:
            unexpected.append(f"{case.get('classname')}::{case.get('name')}: {message}")
        else:
            counts[kind] += 1
    print("expected skips:", dict(counts) or "none")
    for line in unexpected:
        print("UNEXPECTED SKIP", line)
    return 1 if unexpected else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
