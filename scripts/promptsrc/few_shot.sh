#!/usr/bin/env bash
# PromptSRC's scripts/promptsrc/few_shot.sh DATASET SHOTS: train PromptSRC on SHOTS images per class, seeds 1-3.
set -euo pipefail
# shellcheck source=../lib/reference.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/reference.sh"

usage() {
  cat <<EOF2
Usage: DATA=DIR bash scripts/promptsrc/few_shot.sh DATASET SHOTS [-- KEY VALUE ...]

PromptSRC's script of this name: for seeds 1, 2 and 3 (SEEDS), train PromptSRC (config
vit_b16_c2_ep50_batch4_4+4ctx_few_shot) on SHOTS images per class of all classes of DATASET, into
  OUT/DATASET/PromptSRC/<cfg>_<SHOTS>shots/seed<S>/
whose final test is the accuracy (parse_results.py --protocol few_shot reads it).
  SEEDS       seeds to run (default: 1 2 3, as the reference)
$REFERENCE_ENV_HELP
EOF2
}

reference_setup PromptSRC vit_b16_c2_ep50_batch4_4+4ctx_few_shot "DATASET SHOTS" "$@"
check_numbers SHOTS "$SHOTS"
for seed in $SEEDS; do
  reference_train "$DATASET" "$seed" "$OUT/$(stem "$DATASET")/PromptSRC/${CFG_NAMES[0]}_${SHOTS}shots/seed$seed" \
    "PromptSRC few-shot $(stem "$DATASET") ${SHOTS}-shot seed $seed" DATASET.NUM_SHOTS "$SHOTS"
done
