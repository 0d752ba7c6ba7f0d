#!/usr/bin/env bash
# PromptSRC's scripts/promptsrc/base2new_test.sh DATASET SEED: evaluate the base-trained PromptSRC on the new classes.
set -euo pipefail
# shellcheck source=../lib/reference.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/reference.sh"

usage() {
  cat <<EOF2
Usage: DATA=DIR bash scripts/promptsrc/base2new_test.sh DATASET SEED [-- KEY VALUE ...]

PromptSRC's script of this name: evaluate, eval-only, the run of base2new_train.sh (config
vit_b16_c2_ep20_batch4_4+4ctx, its last epoch) on the new classes of DATASET, into
  OUT/base2new/test_new/DATASET/shots_16/PromptSRC/<cfg>/seed<SEED>/
$REFERENCE_ENV_HELP
EOF2
}

reference_setup PromptSRC vit_b16_c2_ep20_batch4_4+4ctx "DATASET SEED" "$@"
common="$(stem "$DATASET")/shots_16/PromptSRC/${CFG_NAMES[0]}/seed$SEED"
reference_eval "$DATASET" "$SEED" "$OUT/base2new/test_new/$common" "$OUT/base2new/train_base/$common" \
  "PromptSRC test_new $(stem "$DATASET") seed $SEED" DATASET.NUM_SHOTS 16 DATASET.SUBSAMPLE_CLASSES new
