#!/usr/bin/env bash
# CoOp's scripts/cocoop/base2new_test.sh DATASET SEED: evaluate the base-trained CoCoOp on the new classes.
set -euo pipefail
# shellcheck source=../lib/reference.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/reference.sh"

usage() {
  cat <<EOF2
Usage: DATA=DIR bash scripts/cocoop/base2new_test.sh DATASET SEED [-- KEY VALUE ...]

CoOp's script of this name: evaluate, eval-only, the run of base2new_train.sh (config
vit_b16_c4_ep10_batch1_ctxv1, its last epoch: the reference fixes 10) on the new classes of DATASET, into
  OUT/base2new/test_new/DATASET/shots_16/CoCoOp/<cfg>/seed<SEED>/
$REFERENCE_ENV_HELP
EOF2
}

reference_setup CoCoOp vit_b16_c4_ep10_batch1_ctxv1 "DATASET SEED" "$@"
common="$(stem "$DATASET")/shots_16/CoCoOp/${CFG_NAMES[0]}/seed$SEED"
reference_eval "$DATASET" "$SEED" "$OUT/base2new/test_new/$common" "$OUT/base2new/train_base/$common" \
  "CoCoOp test_new $(stem "$DATASET") seed $SEED" DATASET.NUM_SHOTS 16 DATASET.SUBSAMPLE_CLASSES new
