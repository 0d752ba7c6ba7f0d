#!/usr/bin/env bash
# CoOp's scripts/coop/eval.sh DATASET CFG: evaluate the 16-shot ImageNet CoOp runs of main.sh on DATASET, seeds 1-3.
set -euo pipefail
# shellcheck source=../lib/reference.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/reference.sh"

usage() {
  cat <<EOF2
Usage: DATA=DIR bash scripts/coop/eval.sh DATASET CFG [-- KEY VALUE ...]

CoOp's script of this name: for seeds 1, 2 and 3 (SEEDS), evaluate, eval-only, the imagenet run of
main.sh with config CFG, 16 shots, 16 context tokens, no class-specific context, class token at the
end (its last epoch; the reference fixes 50, the last of its ep50 configs) on DATASET, into
  OUT/evaluation/CoOp/CFG_16shots/nctx16_cscFalse_ctpend/DATASET/seed<S>/
  SEEDS       seeds to run (default: 1 2 3, as the reference)
$REFERENCE_ENV_HELP
EOF2
}

reference_setup CoOp "" "DATASET CFG" "$@"
group="CoOp/${CFG_NAMES[0]}_16shots/nctx16_cscFalse_ctpend"
for seed in $SEEDS; do
  reference_eval "$DATASET" "$seed" "$OUT/evaluation/$group/$(stem "$DATASET")/seed$seed" \
    "$OUT/imagenet/$group/seed$seed" \
    "CoOp evaluate $(stem "$DATASET") with imagenet ${CFG_NAMES[0]} seed $seed" \
    TRAINER.COOP.N_CTX 16 TRAINER.COOP.CSC False TRAINER.COOP.CLASS_TOKEN_POSITION end
done
