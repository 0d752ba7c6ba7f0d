#!/usr/bin/env bash
# MaPLe's scripts/vpt/xd_train_vpt.sh DATASET SEED: train VPT on all classes of the source dataset.
set -euo pipefail
# shellcheck source=../lib/reference.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/reference.sh"

usage() {
  cat <<EOF2
Usage: DATA=DIR bash scripts/vpt/xd_train_vpt.sh DATASET SEED [-- KEY VALUE ...]

MaPLe's script of this name: train VPT (config vit_b16_c2_ep5_batch4_4, the base-to-new
one: the reference has no cross-dataset config for it) on all classes of DATASET (imagenet for
cross-dataset transfer), 16 shots, seed SEED, into
  OUT/DATASET/VPT/<cfg>_16shots/seed<SEED>/
which xd_test_vpt.sh evaluates on the target datasets.
$REFERENCE_ENV_HELP
EOF2
}

reference_setup VPT vit_b16_c2_ep5_batch4_4 "DATASET SEED" "$@"
reference_train "$DATASET" "$SEED" "$OUT/$(stem "$DATASET")/VPT/${CFG_NAMES[0]}_16shots/seed$SEED" \
  "VPT train $(stem "$DATASET") 16-shot seed $SEED" DATASET.NUM_SHOTS 16
