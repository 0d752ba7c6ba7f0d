#!/usr/bin/env bash
# CoOp's scripts/cocoop/xd_train.sh SEED: train CoCoOp on all classes of ImageNet, 16 shots.
set -euo pipefail
# shellcheck source=../lib/reference.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/reference.sh"

usage() {
  cat <<EOF2
Usage: DATA=DIR bash scripts/cocoop/xd_train.sh SEED [-- KEY VALUE ...]

CoOp's script of this name: train CoCoOp (config vit_b16_c4_ep10_batch1_ctxv1) on all classes of
imagenet (SOURCE_DATASET), 16 shots, seed SEED, into
  OUT/imagenet/CoCoOp/<cfg>_16shots/seed<SEED>/
which xd_test.sh evaluates on the target datasets.
  SOURCE_DATASET  the dataset to train on, a name in configs/datasets/ or a .yaml path, which names
                  the run folder (default: imagenet, which the reference fixes)
$REFERENCE_ENV_HELP
EOF2
}

DATASET="${SOURCE_DATASET:-imagenet}"
reference_setup CoCoOp vit_b16_c4_ep10_batch1_ctxv1 "SEED" "$@"
reference_train "$DATASET" "$SEED" "$OUT/$(stem "$DATASET")/CoCoOp/${CFG_NAMES[0]}_16shots/seed$SEED" \
  "CoCoOp train $(stem "$DATASET") 16-shot seed $SEED" DATASET.NUM_SHOTS 16
