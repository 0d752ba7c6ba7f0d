#!/usr/bin/env bash
# Quick start, step "demo": install what is missing, then run the base-to-new demo on the CPU.
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

case "${1:-}" in
  -h|--help)
    cat <<EOF
Usage: bash scripts/demo.sh [base2new.sh FLAGS]

Installs what is missing (scripts/install.sh --only-missing: PyTorch, Dassl.pytorch, this project's
dependencies; a rerun finds them and installs nothing), then runs the demo: bash scripts/base2new.sh
without a dataset root, i.e. tiny CLIPs pretrained here once (cached under the demo folder), the
Synthetic dataset, and a Base / New / HM table of ZeroshotCLIP, CoOp and FDBPL. FLAGS go to
base2new.sh (e.g. --trainer "CoOp MaPLe", --seeds "1 2 3", --random-clip); see its --help.

Where the Dassl git host is unreachable, give its source: DASSL_SRC=/path/to/Dassl.pytorch or
DASSL_ARCHIVE=/path/to/Dassl.pytorch-c61a1b5.tar.gz (a git archive of the pinned commit).
EOF
    exit 0 ;;
esac
bash "$REPO_ROOT/scripts/install.sh" --only-missing
echo
env -u DATA bash "$REPO_ROOT/scripts/base2new.sh" "$@"
