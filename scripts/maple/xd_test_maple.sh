#!/usr/bin/env bash
# MaPLe's scripts/maple/xd_test_maple.sh DATASET SEED: evaluate the ImageNet-trained MaPLe on DATASET.
set -euo pipefail
# shellcheck source=../lib/reference.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/reference.sh"

usage() {
  cat <<EOF2
Usage: DATA=DIR bash scripts/maple/xd_test_maple.sh DATASET SEED [-- KEY VALUE ...]

MaPLe's script of this name: evaluate, eval-only, the imagenet run of xd_train_maple.sh (config
vit_b16_c2_ep5_batch4_2ctx_cross_datasets, its last epoch) on all classes of DATASET, into
  OUT/evaluation/MaPLe/<cfg>_16shots/DATASET/seed<SEED>/
$REFERENCE_ENV_HELP
EOF2
}

reference_setup MaPLe vit_b16_c2_ep5_batch4_2ctx_cross_datasets "DATASET SEED" "$@"
group="MaPLe/${CFG_NAMES[0]}_16shots"
reference_eval "$DATASET" "$SEED" "$OUT/evaluation/$group/$(stem "$DATASET")/seed$SEED" \
  "$OUT/imagenet/$group/seed$SEED" \
  "MaPLe evaluate $(stem "$DATASET") with imagenet seed $SEED"
