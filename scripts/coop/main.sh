#!/usr/bin/env bash
# CoOp's scripts/coop/main.sh DATASET CFG CTP NCTX SHOTS CSC: few-shot CoOp, seeds 1-3.
set -euo pipefail
# shellcheck source=../lib/reference.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/reference.sh"

usage() {
  cat <<EOF2
Usage: DATA=DIR bash scripts/coop/main.sh DATASET CFG CTP NCTX SHOTS CSC [-- KEY VALUE ...]

CoOp's script of this name: for seeds 1, 2 and 3 (SEEDS), train CoOp with config CFG (a name in
configs/trainers/CoOp/, e.g. rn50_ep50) on SHOTS images per class of all classes of DATASET, with
NCTX context tokens (TRAINER.COOP.N_CTX), class-specific context CSC (True or False) and the class
token at CTP (end, middle or front), into
  OUT/DATASET/CoOp/CFG_<SHOTS>shots/nctx<NCTX>_csc<CSC>_ctp<CTP>/seed<S>/
whose final test is the accuracy (parse_results.py --protocol few_shot reads it); eval.sh evaluates
the imagenet runs on other datasets.
  SEEDS       seeds to run (default: 1 2 3, as the reference)
$REFERENCE_ENV_HELP
EOF2
}

reference_setup CoOp "" "DATASET CFG CTP NCTX SHOTS CSC" "$@"
check_numbers SHOTS "$SHOTS"
variant="nctx${NCTX}_csc${CSC}_ctp${CTP}"
for seed in $SEEDS; do
  reference_train "$DATASET" "$seed" "$OUT/$(stem "$DATASET")/CoOp/${CFG_NAMES[0]}_${SHOTS}shots/$variant/seed$seed" \
    "CoOp $(stem "$DATASET") ${CFG_NAMES[0]} $variant ${SHOTS}-shot seed $seed" \
    TRAINER.COOP.N_CTX "$NCTX" TRAINER.COOP.CSC "$CSC" TRAINER.COOP.CLASS_TOKEN_POSITION "$CTP" \
    DATASET.NUM_SHOTS "$SHOTS"
done
