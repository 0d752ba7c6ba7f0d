#!/usr/bin/env bash
# PromptSRC's scripts/promptsrc/xd_test.sh DATASET SEED: evaluate the ImageNet-trained PromptSRC on DATASET.
set -euo pipefail
# shellcheck source=../lib/reference.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/reference.sh"

usage() {
  cat <<EOF2
Usage: DATA=DIR bash scripts/promptsrc/xd_test.sh DATASET SEED [-- KEY VALUE ...]

PromptSRC's script of this name: evaluate, eval-only, the imagenet run of xd_train.sh (config
vit_b16_c2_ep20_batch4_4+4ctx_cross_datasets, its last epoch) on all classes of DATASET, into
  OUT/evaluation/PromptSRC/<cfg>_16shots/DATASET/seed<SEED>/
$REFERENCE_ENV_HELP
EOF2
}

reference_setup PromptSRC vit_b16_c2_ep20_batch4_4+4ctx_cross_datasets "DATASET SEED" "$@"
group="PromptSRC/${CFG_NAMES[0]}_16shots"
reference_eval "$DATASET" "$SEED" "$OUT/evaluation/$group/$(stem "$DATASET")/seed$SEED" \
  "$OUT/imagenet/$group/seed$SEED" \
  "PromptSRC evaluate $(stem "$DATASET") with imagenet seed $SEED"
