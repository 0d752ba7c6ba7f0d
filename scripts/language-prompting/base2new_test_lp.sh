#!/usr/bin/env bash
# MaPLe's scripts/language-prompting/base2new_test_lp.sh DATASET SEED:
# Evaluate the base-trained language-only IVLP on the new classes.
set -euo pipefail
# shellcheck source=../lib/reference.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/reference.sh"

usage() {
  cat <<EOF2
Usage: DATA=DIR bash scripts/language-prompting/base2new_test_lp.sh DATASET SEED [-- KEY VALUE ...]

MaPLe's script of this name: evaluate, eval-only, the run of base2new_train_lp.sh
(config vit_b16_c2_ep5_batch4_4ctx_language_only, its last epoch) on the new classes of DATASET, into
  OUT/base2new/test_new/DATASET/shots_16/IVLP/<cfg>/seed<SEED>/
$REFERENCE_ENV_HELP
EOF2
}

reference_setup IVLP vit_b16_c2_ep5_batch4_4ctx_language_only "DATASET SEED" "$@"
common="$(stem "$DATASET")/shots_16/IVLP/${CFG_NAMES[0]}/seed$SEED"
reference_eval "$DATASET" "$SEED" "$OUT/base2new/test_new/$common" "$OUT/base2new/train_base/$common" \
  "IVLP test_new $(stem "$DATASET") seed $SEED" DATASET.NUM_SHOTS 16 DATASET.SUBSAMPLE_CLASSES new
