#!/usr/bin/env bash
# Few-shot classification: train on K images per class (all classes) and test, for several K.
set -euo pipefail
# shellcheck source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

SCRIPT_FLAGS="--data --out --trainer --cfg --datasets --seeds --shots --backbone --load-epoch --teacher
  --regions --topk --ril-dir --ril-workers --nproc --device --dry-run --verbose"
DEFAULT_DATASETS="$ELEVEN_DATASETS"
DEFAULT_SHOTS="1 2 4 8 16"
CFG_PROTOCOL=few_shot
DATA_NOTE="required"

usage() {
  cat <<EOF
Usage: bash scripts/few_shot.sh --data DIR [FLAGS] [-- KEY VALUE ...]

Few-shot classification. For every trainer, dataset, number of shots and seed: train on that
many images per class of all classes (FDBPL-family trainers from an RIL table, built first when
missing) and test at the end of training; ZeroshotCLIP is only evaluated. Then prints the
accuracy table, one column per number of shots (scripts/parse_results.py --protocol few_shot).
Run folders:
  OUT/few_shot/<dataset>/shots_<K>/<TRAINER>/<cfg>/seed<S>/
$RESUME_HELP

Flags:
EOF
  print_flags
}

read_flags "$@"
plan_methods_on_datasets few_shot

for i in "${!TRAINERS[@]}"; do
  for dataset in $DATASETS; do
    for shots in $SHOTS; do
      for seed in $SEEDS; do
        dir="$OUT/few_shot/$(stem "$dataset")/shots_$shots/${TRAINERS[i]}/${CFG_NAMES[i]}/seed$seed"
        label="few_shot $(stem "$dataset") ${TRAINERS[i]}/${CFG_NAMES[i]} ${shots}-shot seed $seed"
        if needs_training "${TRAINERS[i]}"; then
          train_step "$i" "$dataset" "$seed" "$dir" "$shots" all "$label"
        else
          eval_step "$i" "$dataset" "$seed" "$dir" "" "$label" DATASET.NUM_SHOTS "$shots"
        fi
      done
    done
  done
done

# shellcheck disable=SC2086
print_results few_shot $DATASETS
