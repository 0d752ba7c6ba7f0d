#!/usr/bin/env bash
# PromptSRC's scripts/promptsrc/reproduce_base2novel_setting.sh DATASET SEED WEIGHTSPATH: evaluate published weights.
set -euo pipefail
# shellcheck source=../lib/reference.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/reference.sh"

usage() {
  cat <<EOF2
Usage: DATA=DIR bash scripts/promptsrc/reproduce_base2novel_setting.sh DATASET SEED WEIGHTSPATH [-- KEY VALUE ...]

PromptSRC's script of this name: evaluate, eval-only, the checkpoint in WEIGHTSPATH/base/seed<SEED>/
(PromptSRC's published weights of DATASET, or a train_base run folder; config
vit_b16_c2_ep20_batch4_4+4ctx, its last epoch) on the base and on the new classes of DATASET, into
  OUT/base2new/test_{base,new}/DATASET/shots_16/PromptSRC/<cfg>/seed<SEED>/
$REFERENCE_ENV_HELP
EOF2
}

reference_setup PromptSRC vit_b16_c2_ep20_batch4_4+4ctx "DATASET SEED WEIGHTSPATH" "$@"
for split in base new; do
  reference_eval "$DATASET" "$SEED" \
    "$OUT/base2new/test_$split/$(stem "$DATASET")/shots_16/PromptSRC/${CFG_NAMES[0]}/seed$SEED" \
    "$WEIGHTSPATH/base/seed$SEED" "PromptSRC test_$split $(stem "$DATASET") seed $SEED" \
    DATASET.NUM_SHOTS 16 DATASET.SUBSAMPLE_CLASSES "$split"
done
