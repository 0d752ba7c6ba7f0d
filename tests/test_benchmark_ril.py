"""scripts/benchmark_ril.py: a small run measures precompute, random reads and bytes per region."""
import re

from tests.conftest import run_script


def test_small_run_reports_every_figure(tmp_path):
    result = run_script("scripts/benchmark_ril.py", "--images", "4", "--regions", "8", "--topk", "20", "--seconds",
                        "0.2", "--workers", "0", "--workdir", str(tmp_path))
    for row in ("teacher bare forward", "table on disk", "table in memory", "pickle per image"):
        assert row in result.stdout, row
    assert re.search(r"^RIL table\s+107\s+856$", result.stdout, re.MULTILINE)  # format 2, K = 20, one teacher
