#!/usr/bin/env bash
# MaPLe's scripts/vpt/base2new_test_vpt.sh: VPT, which this project does not have yet.
set -euo pipefail
# shellcheck source=../lib/reference.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/reference.sh"
reference_absent VPT MaPLe
