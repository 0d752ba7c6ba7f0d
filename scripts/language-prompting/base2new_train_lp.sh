#!/usr/bin/env bash
# MaPLe's scripts/language-prompting/base2new_train_lp.sh DATASET SEED:
# Train language-only IVLP on the base classes, 16 shots.
set -euo pipefail
# shellcheck source=../lib/reference.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/reference.sh"

usage() {
  cat <<EOF2
Usage: DATA=DIR bash scripts/language-prompting/base2new_train_lp.sh DATASET SEED [-- KEY VALUE ...]

MaPLe's script of this name: train language-only IVLP (config vit_b16_c2_ep5_batch4_4ctx_language_only) on the base
classes of DATASET (a name in configs/datasets/, e.g. imagenet), 16 shots, seed SEED, into
  OUT/base2new/train_base/DATASET/shots_16/IVLP/<cfg>/seed<SEED>/
whose final test is the Base accuracy; base2new_test_lp.sh gives New.
$REFERENCE_ENV_HELP
EOF2
}

reference_setup IVLP vit_b16_c2_ep5_batch4_4ctx_language_only "DATASET SEED" "$@"
dir="$OUT/base2new/train_base/$(stem "$DATASET")/shots_16/IVLP/${CFG_NAMES[0]}/seed$SEED"
reference_train "$DATASET" "$SEED" "$dir" "IVLP train_base $(stem "$DATASET") seed $SEED" \
  DATASET.NUM_SHOTS 16 DATASET.SUBSAMPLE_CLASSES base
