#!/usr/bin/env bash
# MaPLe's scripts/maple/reproduce_maple_xd.sh DATASET SEED WEIGHTSPATH: evaluate published ImageNet weights on DATASET.
set -euo pipefail
# shellcheck source=../lib/reference.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/reference.sh"

usage() {
  cat <<EOF2
Usage: DATA=DIR bash scripts/maple/reproduce_maple_xd.sh DATASET SEED WEIGHTSPATH [-- KEY VALUE ...]

MaPLe's script of this name: evaluate, eval-only, the checkpoint in WEIGHTSPATH/seed<SEED>/ (MaPLe's
published ImageNet weights, or an xd_train_maple.sh run folder's parent; config
vit_b16_c2_ep5_batch4_2ctx_cross_datasets, its last epoch) on all classes of DATASET, into
  OUT/evaluation/MaPLe/<cfg>_16shots/DATASET/seed<SEED>/
$REFERENCE_ENV_HELP
EOF2
}

reference_setup MaPLe vit_b16_c2_ep5_batch4_2ctx_cross_datasets "DATASET SEED WEIGHTSPATH" "$@"
reference_eval "$DATASET" "$SEED" "$OUT/evaluation/MaPLe/${CFG_NAMES[0]}_16shots/$(stem "$DATASET")/seed$SEED" \
  "$WEIGHTSPATH/seed$SEED" "MaPLe evaluate $(stem "$DATASET") with $WEIGHTSPATH seed $SEED" DATASET.NUM_SHOTS 16
