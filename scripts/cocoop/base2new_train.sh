#!/usr/bin/env bash
# CoOp's scripts/cocoop/base2new_train.sh: CoCoOp, which this project does not have yet.
set -euo pipefail
# shellcheck source=../lib/reference.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/reference.sh"
reference_absent CoCoOp CoOp
