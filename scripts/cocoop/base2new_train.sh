#!/usr/bin/env bash
# CoOp's scripts/cocoop/base2new_train.sh DATASET SEED: train CoCoOp on the base classes, 16 shots.
set -euo pipefail
# shellcheck source=../lib/reference.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/reference.sh"

usage() {
  cat <<EOF2
Usage: DATA=DIR bash scripts/cocoop/base2new_train.sh DATASET SEED [-- KEY VALUE ...]

CoOp's script of this name: train CoCoOp (config vit_b16_c4_ep10_batch1_ctxv1) on the base classes of
DATASET (a name in configs/datasets/, e.g. imagenet), 16 shots, seed SEED, into
  OUT/base2new/train_base/DATASET/shots_16/CoCoOp/<cfg>/seed<SEED>/
whose final test is the Base accuracy; base2new_test.sh gives New.
$REFERENCE_ENV_HELP
EOF2
}

reference_setup CoCoOp vit_b16_c4_ep10_batch1_ctxv1 "DATASET SEED" "$@"
dir="$OUT/base2new/train_base/$(stem "$DATASET")/shots_16/CoCoOp/${CFG_NAMES[0]}/seed$SEED"
reference_train "$DATASET" "$SEED" "$dir" "CoCoOp train_base $(stem "$DATASET") seed $SEED" \
  DATASET.NUM_SHOTS 16 DATASET.SUBSAMPLE_CLASSES base
