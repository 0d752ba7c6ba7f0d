#!/usr/bin/env bash
# MaPLe's and PromptSRC's scripts/zsclip/zeroshot.sh DATASET CFG: the same as CoOp's scripts/coop/zeroshot.sh.
set -euo pipefail
exec bash "$(dirname "${BASH_SOURCE[0]}")/../coop/zeroshot.sh" "$@"
