#!/usr/bin/env bash
# MaPLe's scripts/maple/xd_train_maple.sh DATASET SEED: train MaPLe on all classes of the source dataset, 16 shots.
set -euo pipefail
# shellcheck source=../lib/reference.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/reference.sh"

usage() {
  cat <<EOF2
Usage: DATA=DIR bash scripts/maple/xd_train_maple.sh DATASET SEED [-- KEY VALUE ...]

MaPLe's script of this name: train MaPLe (config vit_b16_c2_ep5_batch4_2ctx_cross_datasets) on all
classes of DATASET (imagenet for cross-dataset transfer), 16 shots, seed SEED, into
  OUT/DATASET/MaPLe/<cfg>_16shots/seed<SEED>/
which xd_test_maple.sh evaluates on the target datasets.
$REFERENCE_ENV_HELP
EOF2
}

reference_setup MaPLe vit_b16_c2_ep5_batch4_2ctx_cross_datasets "DATASET SEED" "$@"
reference_train "$DATASET" "$SEED" "$OUT/$(stem "$DATASET")/MaPLe/${CFG_NAMES[0]}_16shots/seed$SEED" \
  "MaPLe train $(stem "$DATASET") 16-shot seed $SEED" DATASET.NUM_SHOTS 16
