#!/usr/bin/env bash
# MaPLe's scripts/language-prompting/reproduce_lp.sh DATASET SEED WEIGHTSPATH: evaluate published base-to-new weights.
set -euo pipefail
# shellcheck source=../lib/reference.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/reference.sh"

usage() {
  cat <<EOF2
Usage: DATA=DIR bash scripts/language-prompting/reproduce_lp.sh DATASET SEED WEIGHTSPATH [-- KEY VALUE ...]

MaPLe's script of this name: evaluate, eval-only, the checkpoint in WEIGHTSPATH/base/seed<SEED>/
(published language-only IVLP weights of DATASET, or a train_base run folder; config
vit_b16_c2_ep5_batch4_4ctx_language_only, its last epoch) on the base and on the new classes of DATASET, into
  OUT/base2new/test_{base,new}/DATASET/shots_16/IVLP/<cfg>/seed<SEED>/
$REFERENCE_ENV_HELP
EOF2
}

reference_setup IVLP vit_b16_c2_ep5_batch4_4ctx_language_only "DATASET SEED WEIGHTSPATH" "$@"
for split in base new; do
  reference_eval "$DATASET" "$SEED" \
    "$OUT/base2new/test_$split/$(stem "$DATASET")/shots_16/IVLP/${CFG_NAMES[0]}/seed$SEED" \
    "$WEIGHTSPATH/base/seed$SEED" "IVLP test_$split $(stem "$DATASET") seed $SEED" \
    DATASET.NUM_SHOTS 16 DATASET.SUBSAMPLE_CLASSES "$split"
done
