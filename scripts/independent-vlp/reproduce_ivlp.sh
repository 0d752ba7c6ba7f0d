#!/usr/bin/env bash
# MaPLe's and PromptSRC's scripts/independent-vlp/reproduce_ivlp.sh: IVLP, which this project does not have yet.
set -euo pipefail
# shellcheck source=../lib/reference.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/reference.sh"
reference_absent IVLP MaPLe
