"""The README's two quick-start commands: install only what is missing, then the demo or the tests."""
import os
import re
import subprocess
import sys

from tests.conftest import REPO_ROOT, requires_dassl


def read(path):
    with open(os.path.join(REPO_ROOT, path), encoding="utf-8") as handle:
        return handle.read()


def test_ci_runs_the_readme_test_command():
    test_section = read("README.md").split("\n## Test\n", 1)[1].split("\n## ", 1)[0]
    command = re.search(r"```bash\n(.+?)\n```", test_section, re.S).group(1).split("#")[0].strip()
    assert command == "bash scripts/test.sh"
    assert re.search(r"^(nice -n \d+ )?bash scripts/test\.sh\b", read(".ci/run"), re.M)  # at lower priority, as said


def test_quick_start_opens_the_readme_with_two_commands():
    quick_start = read("README.md").split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.+?)\n```", quick_start, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.split("#")[0].strip()]
    assert commands == ["bash scripts/demo.sh", "bash scripts/test.sh"]


@requires_dassl
def test_rerunning_the_install_installs_nothing():
    result = subprocess.run(
        ["bash", "scripts/install.sh", "--only-missing", "--teachers"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=True,
    )
    assert "found dassl (--only-missing)" in result.stdout
    assert "all installed (--only-missing)" in result.stdout
    # pip prints these for any package it considers; --only-missing must not have called it.
    assert "Requirement already satisfied" not in result.stdout + result.stderr
    assert "Successfully installed" not in result.stdout


def test_missing_requirements_are_named(tmp_path):
    """A requirement that is not installed is listed, so --only-missing would run pip."""
    fake_root = tmp_path / "checkout"
    (fake_root / "trainers").mkdir(parents=True)
    (fake_root / "requirements.txt").write_text("numpy\nsurely-not-installed-package>=1\n")
    (fake_root / "setup.py").write_text('extras_require={"test": ["pytest>=7"]}\n')
    (fake_root / "trainers" / "__init__.py").write_text('__version__ = "0.1.0"\n')
    script = read("scripts/install.sh")
    function = re.search(r"^missing_requirements\(\) \{\n.*?^\}\n", script, re.M | re.S).group(0)
    result = subprocess.run(
        ["bash", "-c", f'python={sys.executable}; repo_root={fake_root}; extras=test\n{function}missing_requirements'],
        capture_output=True, text=True, timeout=60, check=True,
    )
    assert result.stdout.split("\n")[0] == "surely-not-installed-package"
    assert "numpy" not in result.stdout
