#!/usr/bin/env bash
# MaPLe's scripts/language-prompting/xd_test_lp.sh DATASET SEED: evaluate ImageNet's language-only IVLP on DATASET.
set -euo pipefail
# shellcheck source=../lib/reference.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/reference.sh"

usage() {
  cat <<EOF2
Usage: DATA=DIR bash scripts/language-prompting/xd_test_lp.sh DATASET SEED [-- KEY VALUE ...]

MaPLe's script of this name: evaluate, eval-only, the imagenet run of xd_train_lp.sh (config
vit_b16_c2_ep5_batch4_4ctx_language_only, its last epoch) on all classes of DATASET, into
  OUT/evaluation/IVLP/<cfg>_16shots/DATASET/seed<SEED>/
The reference's script loads epoch 2, which its 5-epoch xd_train_lp.sh run never saves
(Dassl keeps the last epoch): LOAD_EPOCH=N chooses another.
$REFERENCE_ENV_HELP
EOF2
}

reference_setup IVLP vit_b16_c2_ep5_batch4_4ctx_language_only "DATASET SEED" "$@"
group="IVLP/${CFG_NAMES[0]}_16shots"
reference_eval "$DATASET" "$SEED" "$OUT/evaluation/$group/$(stem "$DATASET")/seed$SEED" \
  "$OUT/imagenet/$group/seed$SEED" \
  "IVLP evaluate $(stem "$DATASET") with imagenet seed $SEED"
