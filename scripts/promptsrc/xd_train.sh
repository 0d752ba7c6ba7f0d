#!/usr/bin/env bash
# PromptSRC's scripts/promptsrc/xd_train.sh DATASET SEED: train PromptSRC on all classes of the source dataset.
set -euo pipefail
# shellcheck source=../lib/reference.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/reference.sh"

usage() {
  cat <<EOF2
Usage: DATA=DIR bash scripts/promptsrc/xd_train.sh DATASET SEED [-- KEY VALUE ...]

PromptSRC's script of this name: train PromptSRC on all classes of DATASET (imagenet for
cross-dataset transfer), 16 shots, seed SEED, into
  OUT/DATASET/PromptSRC/<cfg>_16shots/seed<SEED>/
which xd_test.sh evaluates on the target datasets. The config is vit_b16_c2_ep20_batch4_4+4ctx_cross_datasets:
PromptSRC's xd scripts name vit_b16_c2_ep5_batch4_4+4ctx_cross_datasets, a file its repository does not
have; its reproduce_xd.sh and xd_test.sh (epoch 20) use this one.
$REFERENCE_ENV_HELP
EOF2
}

reference_setup PromptSRC vit_b16_c2_ep20_batch4_4+4ctx_cross_datasets "DATASET SEED" "$@"
reference_train "$DATASET" "$SEED" "$OUT/$(stem "$DATASET")/PromptSRC/${CFG_NAMES[0]}_16shots/seed$SEED" \
  "PromptSRC train $(stem "$DATASET") 16-shot seed $SEED" DATASET.NUM_SHOTS 16
