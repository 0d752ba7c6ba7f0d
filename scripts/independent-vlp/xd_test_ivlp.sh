#!/usr/bin/env bash
# MaPLe's and PromptSRC's scripts/independent-vlp/xd_test_ivlp.sh DATASET SEED: evaluate ImageNet's IVLP on DATASET.
set -euo pipefail
# shellcheck source=../lib/reference.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/reference.sh"

usage() {
  cat <<EOF2
Usage: DATA=DIR bash scripts/independent-vlp/xd_test_ivlp.sh DATASET SEED [-- KEY VALUE ...]

MaPLe's script of this name: evaluate, eval-only, the imagenet run of xd_train_ivlp.sh (config
vit_b16_c2_ep5_batch4_2+2ctx, its last epoch) on all classes of DATASET, into
  OUT/evaluation/IVLP/<cfg>_16shots/DATASET/seed<SEED>/
The reference's script loads epoch 2, which its 5-epoch xd_train_ivlp.sh run never saves
(Dassl keeps the last epoch): LOAD_EPOCH=N chooses another.
$REFERENCE_ENV_HELP
EOF2
}

reference_setup IVLP vit_b16_c2_ep5_batch4_2+2ctx "DATASET SEED" "$@"
group="IVLP/${CFG_NAMES[0]}_16shots"
reference_eval "$DATASET" "$SEED" "$OUT/evaluation/$group/$(stem "$DATASET")/seed$SEED" \
  "$OUT/imagenet/$group/seed$SEED" \
  "IVLP evaluate $(stem "$DATASET") with imagenet seed $SEED"
