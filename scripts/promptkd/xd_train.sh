#!/usr/bin/env bash
# PromptKD's scripts/promptkd/xd_train.sh DATASET SEED: distil PromptKD on a target dataset from the published
# ImageNet teacher (its cross-dataset setting).
set -euo pipefail
# shellcheck source=../lib/reference.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/reference.sh"

usage() {
  cat <<EOF2
Usage: DATA=DIR bash scripts/promptkd/xd_train.sh DATASET SEED [-- KEY VALUE ...]

PromptKD's script of this name: distil the PromptKD student (config
vit_b16_c2_ep20_batch8_4+4ctx_cross_datasets) on the unlabelled training images of all classes of the
target DATASET (DATASET.NUM_SHOTS 0), seed SEED, from the published ImageNet teacher that PromptKD's
code reads, teacher_model/ImageNet-xd/ under the current directory, epoch 20 (TRAINER.MODAL cross),
into
  OUT/DATASET/PromptKD/<cfg>_0shots/seed<SEED>/
whose final test is the DATASET accuracy (parse_results.py --protocol cross_dataset reads it).
$REFERENCE_ENV_HELP
EOF2
}

reference_setup PromptKD vit_b16_c2_ep20_batch8_4+4ctx_cross_datasets "DATASET SEED" "$@"
reference_train "$DATASET" "$SEED" "$OUT/$(stem "$DATASET")/PromptKD/${CFG_NAMES[0]}_0shots/seed$SEED" \
  "PromptKD cross-dataset $(stem "$DATASET") seed $SEED" DATASET.NUM_SHOTS 0 DATASET.SUBSAMPLE_CLASSES all \
  TRAINER.PROMPTKD.TEMPERATURE 1.0 TRAINER.PROMPTKD.KD_WEIGHT 1000.0 TRAINER.MODAL cross
