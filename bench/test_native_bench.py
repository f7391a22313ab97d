"""Micro-benchmarks of callfs._native against the plain-Python oracles in tests/unit.

    python -m pytest bench/test_native_bench.py --benchmark-only

Each group holds one function on one input, native beside oracle; pathnorm runs on every
request, so its typical case should stay well under a microsecond.
"""
import os
import sys

import pytest

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_ORACLES = os.path.join(_REPO, "tests", "unit")
if _ORACLES not in sys.path:  # the plain-Python oracles live with the unit tests
    sys.path.insert(0, _ORACLES)

import pathnorm_oracle  # noqa: E402
from callfs._native import pathnorm  # noqa: E402

IMPLEMENTATIONS = {"native": pathnorm, "oracle": pathnorm_oracle}

# A typical request path (~30 bytes, one escape) and a long one (~2.3 KB: past the native stack
# buffer, with escapes, multi-byte names and dot segments to resolve).
TYPICAL_URL = b"/projects/2026/report%20q1.pdf"
LONG_URL = b"/" + b"/".join(
    b"dir-%02d%%20caf\xc3\xa9/./x/../\xe6\x97\xa5\xe6\x9c\xac" % i for i in range(80)
) + b"/file.tar.gz"
TYPICAL_PATH = "/projects/2026/report q1.pdf"
LONG_PATH = LONG_URL.decode("utf-8").replace("%20", " ")
TYPICAL_CANONICAL = pathnorm_oracle.normalize_path(TYPICAL_PATH)[0]
LONG_CANONICAL = pathnorm_oracle.normalize_path(LONG_PATH)[0]

CASES = {
    "normalize_url_path": {"typical": TYPICAL_URL, "long": LONG_URL},
    "normalize_path": {"typical": TYPICAL_PATH, "long": LONG_PATH},
    "split_parent": {"typical": TYPICAL_CANONICAL, "long": LONG_CANONICAL},
    "ancestors": {"typical": TYPICAL_CANONICAL, "long": LONG_CANONICAL},
}


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("case", ["typical", "long"])
@pytest.mark.parametrize("function", CASES)
def test_pathnorm(benchmark, function, case, implementation):
    arg = CASES[function][case]
    call = getattr(IMPLEMENTATIONS[implementation], function)
    expected = getattr(pathnorm_oracle, function)(arg)
    benchmark.group = f"pathnorm.{function} {case} ({len(arg)} chars)"
    assert benchmark(call, arg) == expected
