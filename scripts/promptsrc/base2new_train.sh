#!/usr/bin/env bash
# PromptSRC's scripts/promptsrc/base2new_train.sh DATASET SEED: train PromptSRC on the base classes, 16 shots.
set -euo pipefail
# shellcheck source=../lib/reference.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/reference.sh"

usage() {
  cat <<EOF2
Usage: DATA=DIR bash scripts/promptsrc/base2new_train.sh DATASET SEED [-- KEY VALUE ...]

PromptSRC's script of this name: train PromptSRC (config vit_b16_c2_ep20_batch4_4+4ctx) on the base classes of
DATASET (a name in configs/datasets/, e.g. imagenet), 16 shots, seed SEED, into
  OUT/base2new/train_base/DATASET/shots_16/PromptSRC/<cfg>/seed<SEED>/
whose final test is the Base accuracy; base2new_test.sh gives New.
$REFERENCE_ENV_HELP
EOF2
}

reference_setup PromptSRC vit_b16_c2_ep20_batch4_4+4ctx "DATASET SEED" "$@"
dir="$OUT/base2new/train_base/$(stem "$DATASET")/shots_16/PromptSRC/${CFG_NAMES[0]}/seed$SEED"
reference_train "$DATASET" "$SEED" "$dir" "PromptSRC train_base $(stem "$DATASET") seed $SEED" \
  DATASET.NUM_SHOTS 16 DATASET.SUBSAMPLE_CLASSES base
