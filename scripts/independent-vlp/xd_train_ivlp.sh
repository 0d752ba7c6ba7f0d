#!/usr/bin/env bash
# MaPLe's and PromptSRC's scripts/independent-vlp/xd_train_ivlp.sh DATASET SEED:
# Train IVLP on all classes of the source dataset.
set -euo pipefail
# shellcheck source=../lib/reference.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/reference.sh"

usage() {
  cat <<EOF2
Usage: DATA=DIR bash scripts/independent-vlp/xd_train_ivlp.sh DATASET SEED [-- KEY VALUE ...]

MaPLe's script of this name: train IVLP (config vit_b16_c2_ep5_batch4_2+2ctx, the base-to-new
one: the reference has no cross-dataset config for it) on all classes of DATASET (imagenet for
cross-dataset transfer), 16 shots, seed SEED, into
  OUT/DATASET/IVLP/<cfg>_16shots/seed<SEED>/
which xd_test_ivlp.sh evaluates on the target datasets.
$REFERENCE_ENV_HELP
EOF2
}

reference_setup IVLP vit_b16_c2_ep5_batch4_2+2ctx "DATASET SEED" "$@"
reference_train "$DATASET" "$SEED" "$OUT/$(stem "$DATASET")/IVLP/${CFG_NAMES[0]}_16shots/seed$SEED" \
  "IVLP train $(stem "$DATASET") 16-shot seed $SEED" DATASET.NUM_SHOTS 16
