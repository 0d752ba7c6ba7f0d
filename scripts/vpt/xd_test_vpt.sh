#!/usr/bin/env bash
# MaPLe's scripts/vpt/xd_test_vpt.sh DATASET SEED: evaluate ImageNet's VPT on DATASET.
set -euo pipefail
# shellcheck source=../lib/reference.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/reference.sh"

usage() {
  cat <<EOF2
Usage: DATA=DIR bash scripts/vpt/xd_test_vpt.sh DATASET SEED [-- KEY VALUE ...]

MaPLe's script of this name: evaluate, eval-only, the imagenet run of xd_train_vpt.sh (config
vit_b16_c2_ep5_batch4_4, its last epoch) on all classes of DATASET, into
  OUT/evaluation/VPT/<cfg>_16shots/DATASET/seed<SEED>/
The reference's script loads epoch 2, which its 5-epoch xd_train_vpt.sh run never saves
(Dassl keeps the last epoch): LOAD_EPOCH=N chooses another.
$REFERENCE_ENV_HELP
EOF2
}

reference_setup VPT vit_b16_c2_ep5_batch4_4 "DATASET SEED" "$@"
group="VPT/${CFG_NAMES[0]}_16shots"
reference_eval "$DATASET" "$SEED" "$OUT/evaluation/$group/$(stem "$DATASET")/seed$SEED" \
  "$OUT/imagenet/$group/seed$SEED" \
  "VPT evaluate $(stem "$DATASET") with imagenet seed $SEED"
