#!/usr/bin/env bash
# MaPLe's scripts/language-prompting/reproduce_lp.sh: language-only IVLP, which this project does not have yet.
set -euo pipefail
# shellcheck source=../lib/reference.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/reference.sh"
reference_absent IVLP MaPLe
