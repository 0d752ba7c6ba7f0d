#!/usr/bin/env bash
# CoOp's scripts/cocoop/xd_test.sh DATASET SEED: evaluate the ImageNet-trained CoCoOp on DATASET.
set -euo pipefail
# shellcheck source=../lib/reference.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/reference.sh"

usage() {
  cat <<EOF2
Usage: DATA=DIR bash scripts/cocoop/xd_test.sh DATASET SEED [-- KEY VALUE ...]

CoOp's script of this name: evaluate, eval-only, the imagenet run of xd_train.sh (config
vit_b16_c4_ep10_batch1_ctxv1, its last epoch: the reference fixes 10) on all classes of DATASET, into
  OUT/evaluation/CoCoOp/<cfg>_16shots/DATASET/seed<SEED>/
  SOURCE_DATASET  the dataset xd_train.sh trained on, which names its run folder (default: imagenet,
                  which the reference fixes)
$REFERENCE_ENV_HELP
EOF2
}

reference_setup CoCoOp vit_b16_c4_ep10_batch1_ctxv1 "DATASET SEED" "$@"
source_name="$(stem "${SOURCE_DATASET:-imagenet}")"
group="CoCoOp/${CFG_NAMES[0]}_16shots"
reference_eval "$DATASET" "$SEED" "$OUT/evaluation/$group/$(stem "$DATASET")/seed$SEED" \
  "$OUT/$source_name/$group/seed$SEED" \
  "CoCoOp evaluate $(stem "$DATASET") with $source_name seed $SEED"
