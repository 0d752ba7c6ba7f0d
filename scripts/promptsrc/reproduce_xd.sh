#!/usr/bin/env bash
# PromptSRC's scripts/promptsrc/reproduce_xd.sh DATASET SEED WEIGHTSPATH: evaluate published ImageNet weights.
set -euo pipefail
# shellcheck source=../lib/reference.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/reference.sh"

usage() {
  cat <<EOF2
Usage: DATA=DIR bash scripts/promptsrc/reproduce_xd.sh DATASET SEED WEIGHTSPATH [-- KEY VALUE ...]

PromptSRC's script of this name: evaluate, eval-only, the checkpoint in WEIGHTSPATH/seed<SEED>/
(PromptSRC's published ImageNet weights; config vit_b16_c2_ep20_batch4_4+4ctx_cross_datasets,
its last epoch) on all classes of DATASET, into
  OUT/evaluation/PromptSRC/<cfg>_16shots/DATASET/seed<SEED>/
$REFERENCE_ENV_HELP
EOF2
}

reference_setup PromptSRC vit_b16_c2_ep20_batch4_4+4ctx_cross_datasets "DATASET SEED WEIGHTSPATH" "$@"
reference_eval "$DATASET" "$SEED" "$OUT/evaluation/PromptSRC/${CFG_NAMES[0]}_16shots/$(stem "$DATASET")/seed$SEED" \
  "$WEIGHTSPATH/seed$SEED" "PromptSRC evaluate $(stem "$DATASET") with $WEIGHTSPATH seed $SEED" DATASET.NUM_SHOTS 16
