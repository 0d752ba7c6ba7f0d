#!/usr/bin/env bash
# PromptKD's scripts/promptkd/base2new_train.sh DATASET SEED: distil PromptKD base-to-new from the published
# teacher, then (not in the reference) evaluate it eval-only on the base and on the new classes.
set -euo pipefail
# shellcheck source=../lib/reference.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/reference.sh"

usage() {
  cat <<EOF2
Usage: DATA=DIR bash scripts/promptkd/base2new_train.sh DATASET SEED [-- KEY VALUE ...]

PromptKD's script of this name: distil the PromptKD student (config vit_b16_c2_ep20_batch8_4+4ctx) on
the unlabelled training images of all classes of DATASET (DATASET.NUM_SHOTS 0), seed SEED, from the
published teacher that PromptKD's code reads, teacher_model/<DATASET.NAME>/ under the current directory
(TRAINER.MODAL base2novel; KD_WEIGHT 1000.0 as the reference passes it, whose comment gives 200.0 for
fgvc_aircraft, oxford_flowers and dtd: -- TRAINER.PROMPTKD.KD_WEIGHT 200.0), into
  OUT/base2new/train_base/DATASET/shots_0/PromptKD/<cfg>/seed_<SEED>/
Then, where the reference reads both from that run's log, evaluate it eval-only into
  OUT/base2new/test_{base,new}/DATASET/shots_0/PromptKD/<cfg>/seed_<SEED>/
scripts/promptkd.sh runs both stages (the teacher too) for the benchmark.
$REFERENCE_ENV_HELP
EOF2
}

reference_setup PromptKD vit_b16_c2_ep20_batch8_4+4ctx "DATASET SEED" "$@"
common="$(stem "$DATASET")/shots_0/PromptKD/${CFG_NAMES[0]}/seed_$SEED"
reference_train "$DATASET" "$SEED" "$OUT/base2new/train_base/$common" \
  "PromptKD train_base $(stem "$DATASET") seed $SEED" \
  DATASET.NUM_SHOTS 0 TRAINER.MODAL base2novel TRAINER.PROMPTKD.TEMPERATURE 1.0 TRAINER.PROMPTKD.KD_WEIGHT 1000.0
for split in base new; do
  reference_eval "$DATASET" "$SEED" "$OUT/base2new/test_$split/$common" "$OUT/base2new/train_base/$common" \
    "PromptKD test_$split $(stem "$DATASET") seed $SEED" DATASET.NUM_SHOTS 0 DATASET.SUBSAMPLE_CLASSES "$split"
done
