#!/usr/bin/env bash
# MaPLe's scripts/vpt/base2new_test_vpt.sh DATASET SEED: evaluate the base-trained VPT on the new classes.
set -euo pipefail
# shellcheck source=../lib/reference.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/reference.sh"

usage() {
  cat <<EOF2
Usage: DATA=DIR bash scripts/vpt/base2new_test_vpt.sh DATASET SEED [-- KEY VALUE ...]

MaPLe's script of this name: evaluate, eval-only, the run of base2new_train_vpt.sh
(config vit_b16_c2_ep5_batch4_4, its last epoch) on the new classes of DATASET, into
  OUT/base2new/test_new/DATASET/shots_16/VPT/<cfg>/seed<SEED>/
$REFERENCE_ENV_HELP
EOF2
}

reference_setup VPT vit_b16_c2_ep5_batch4_4 "DATASET SEED" "$@"
common="$(stem "$DATASET")/shots_16/VPT/${CFG_NAMES[0]}/seed$SEED"
reference_eval "$DATASET" "$SEED" "$OUT/base2new/test_new/$common" "$OUT/base2new/train_base/$common" \
  "VPT test_new $(stem "$DATASET") seed $SEED" DATASET.NUM_SHOTS 16 DATASET.SUBSAMPLE_CLASSES new
