#!/usr/bin/env bash
# CoOp's scripts/coop/zeroshot.sh DATASET CFG: zero-shot CLIP on DATASET with the backbone of CoOp's config CFG.
set -euo pipefail
# shellcheck source=../lib/reference.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/reference.sh"

usage() {
  cat <<EOF2
Usage: DATA=DIR bash scripts/coop/zeroshot.sh DATASET CFG [-- KEY VALUE ...]

CoOp's script of this name (MaPLe's and PromptSRC's scripts/zsclip/zeroshot.sh): evaluate zero-shot
CLIP (ZeroshotCLIP, with the dataset's CoOp template) on all classes of DATASET, with the backbone and
input of CoOp's config CFG (rn50, rn101, vit_b32 or vit_b16, in configs/trainers/CoOp/), into
  OUT/ZeroshotCLIP/CFG/DATASET/
$REFERENCE_ENV_HELP
EOF2
}

CONFIG_FOLDER=CoOp  # as the reference: ZeroshotCLIP with CoOp's configs
reference_setup ZeroshotCLIP "" "DATASET CFG" "$@"
reference_cmd "$DATASET" "$OUT/ZeroshotCLIP/${CFG_NAMES[0]}/$(stem "$DATASET")" --eval-only
reference_run "$OUT/ZeroshotCLIP/${CFG_NAMES[0]}/$(stem "$DATASET")" "ZeroshotCLIP ${CFG_NAMES[0]} $(stem "$DATASET")"
