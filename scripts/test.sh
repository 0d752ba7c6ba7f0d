#!/usr/bin/env bash
# Quick start, step "tests": install what is missing, then run the whole test suite (as CI does).
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

case "${1:-}" in
  -h|--help)
    cat <<EOF
Usage: bash scripts/test.sh [pytest ARGS]

Installs what is missing (scripts/install.sh --only-missing --teachers: PyTorch, Dassl.pytorch, this
project's dependencies, pytest, pytest-xdist and open_clip_torch; a rerun finds them and installs
nothing), then runs python -m pytest -rs -n \$TEST_WORKERS --dist loadfile --durations 25 tests [ARGS] from the
checkout: TEST_WORKERS processes (default 2; 0 runs every test in one process), each taking whole test
files, so a module's fixtures are built once; the 25 slowest test phases are listed at the end. This is
the command .ci/run runs.

Where the Dassl git host is unreachable, give its source: DASSL_SRC=/path/to/Dassl.pytorch or
DASSL_ARCHIVE=/path/to/Dassl.pytorch-c61a1b5.tar.gz (a git archive of the pinned commit).
EOF
    exit 0 ;;
esac
bash "$REPO_ROOT/scripts/install.sh" --only-missing --teachers
echo
cd "$REPO_ROOT"
exec "${PYTHON:-python3}" -m pytest -rs -n "${TEST_WORKERS:-2}" --dist loadfile --durations 25 tests "$@"
