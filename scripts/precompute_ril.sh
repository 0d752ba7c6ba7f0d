#!/usr/bin/env bash
# RIL tables for a list of datasets, seeds and shots, ahead of the protocol scripts that use them.
set -euo pipefail
# shellcheck source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

SCRIPT_FLAGS="--data --out --trainer --cfg --datasets --seeds --shots --subsample --teacher --regions --topk
  --ril-dir --ril-workers --nproc --device --dry-run --verbose"
DEFAULT_DATASETS="$ELEVEN_DATASETS"
DEFAULT_SUBSAMPLE=base
DATA_NOTE="required"

usage() {
  cat <<EOF
Usage: bash scripts/precompute_ril.sh --data DIR [FLAGS] [-- KEY VALUE ...]

Builds (or resumes) the RIL table of every dataset, shots and seed with python -m ril precompute
(torchrun with --nproc N > 1), for the training split the protocol scripts use: the same
dataset config, method config (--trainer/--cfg set INPUT.SIZE and INPUT.INTERPOLATION), seed,
shots and --subsample. The protocol scripts, given the same --out (or --ril-dir), --teacher,
--regions, --topk and config, find these tables and do not rebuild them. With shots <= 0 every
seed trains on the same images, so one table (seed_all) serves them all. A table counts as
finished only when its folder holds $MARKER; an unfinished one is resumed.

Flags:
EOF
  print_flags
}

read_flags "$@"
plan_methods_on_datasets "RIL tables ($SUBSAMPLE classes, teacher $TEACHER, $REGIONS regions, top-$TOPK)"

for i in "${!TRAINERS[@]}"; do
  for dataset in $DATASETS; do
    for shots in $SHOTS; do
      for seed in $SEEDS; do
        ensure_table "$i" "$dataset" "$seed" "$shots" "$SUBSAMPLE"
      done
    done
  done
done
if [ "${DRY_RUN:-}" != 1 ]; then echo "RIL tables are under $RIL_DIR"; fi
