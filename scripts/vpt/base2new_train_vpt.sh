#!/usr/bin/env bash
# MaPLe's scripts/vpt/base2new_train_vpt.sh DATASET SEED: train VPT on the base classes, 16 shots.
set -euo pipefail
# shellcheck source=../lib/reference.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/reference.sh"

usage() {
  cat <<EOF2
Usage: DATA=DIR bash scripts/vpt/base2new_train_vpt.sh DATASET SEED [-- KEY VALUE ...]

MaPLe's script of this name: train VPT (config vit_b16_c2_ep5_batch4_4) on the base
classes of DATASET (a name in configs/datasets/, e.g. imagenet), 16 shots, seed SEED, into
  OUT/base2new/train_base/DATASET/shots_16/VPT/<cfg>/seed<SEED>/
whose final test is the Base accuracy; base2new_test_vpt.sh gives New.
$REFERENCE_ENV_HELP
EOF2
}

reference_setup VPT vit_b16_c2_ep5_batch4_4 "DATASET SEED" "$@"
dir="$OUT/base2new/train_base/$(stem "$DATASET")/shots_16/VPT/${CFG_NAMES[0]}/seed$SEED"
reference_train "$DATASET" "$SEED" "$dir" "VPT train_base $(stem "$DATASET") seed $SEED" \
  DATASET.NUM_SHOTS 16 DATASET.SUBSAMPLE_CLASSES base
