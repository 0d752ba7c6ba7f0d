#!/usr/bin/env bash
# PromptSRC's scripts/promptsrc/reproduce_few_shot.sh DATASET SHOTS WEIGHTSPATH: evaluate published few-shot weights.
set -euo pipefail
# shellcheck source=../lib/reference.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/reference.sh"

usage() {
  cat <<EOF2
Usage: DATA=DIR bash scripts/promptsrc/reproduce_few_shot.sh DATASET SHOTS WEIGHTSPATH [-- KEY VALUE ...]

PromptSRC's script of this name: for seeds 1, 2 and 3 (SEEDS), evaluate, eval-only, the checkpoint in
WEIGHTSPATH/<SHOTS>shot/seed<S>/ (PromptSRC's published few-shot weights; config
vit_b16_c2_ep50_batch4_4+4ctx_few_shot, its last epoch) on DATASET, into
  OUT/few_shot/DATASET/PromptSRC/<cfg>_<SHOTS>shots/seed<S>/
  SEEDS       seeds to run (default: 1 2 3, as the reference)
$REFERENCE_ENV_HELP
EOF2
}

reference_setup PromptSRC vit_b16_c2_ep50_batch4_4+4ctx_few_shot "DATASET SHOTS WEIGHTSPATH" "$@"
check_numbers SHOTS "$SHOTS"
for seed in $SEEDS; do
  reference_eval "$DATASET" "$seed" \
    "$OUT/few_shot/$(stem "$DATASET")/PromptSRC/${CFG_NAMES[0]}_${SHOTS}shots/seed$seed" \
    "$WEIGHTSPATH/${SHOTS}shot/seed$seed" "PromptSRC few-shot $(stem "$DATASET") ${SHOTS}-shot seed $seed" \
    DATASET.NUM_SHOTS "$SHOTS"
done
