#!/usr/bin/env bash
# Base-to-new generalization: train on the base classes, evaluate eval-only on base and on new.
set -euo pipefail
# shellcheck source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

SCRIPT_FLAGS="--data --out --trainer --cfg --datasets --seeds --shots --backbone --load-epoch --teacher
  --regions --topk --ril-dir --ril-workers --nproc --device --dry-run --verbose"
DEFAULT_DATASETS="$ELEVEN_DATASETS"
DATA_NOTE="unset: run the demo"
SHOTS_NOTE="one value"

usage() {
  cat <<EOF
Usage: bash scripts/base2new.sh [FLAGS] [-- KEY VALUE ...]

Base-to-new generalization. For every trainer, dataset and seed: train on the base classes
(the first half of the sorted labels; ZeroshotCLIP has nothing to train), then evaluate
eval-only on base and on new. FDBPL and *_FDBPL trainers train from an RIL table, which is
built first when missing (python -m ril precompute with the run's dataset config, method
config, seed, shots and base classes). Then prints the Base / New / HM table
(scripts/parse_results.py). Run folders:
  OUT/base2new/{train_base,test_base,test_new}/<dataset>/shots_<K>/<TRAINER>/<cfg>/seed<S>/
$RESUME_HELP

Demo: without a dataset root (no --data, no DATA), the script makes the Synthetic dataset and
two random tiny CLIP checkpoints (scripts/make_tiny_clip.py: a student, and a larger teacher)
under OUT, then runs ZeroshotCLIP, CoOp and FDBPL base-to-new on the CPU in a few minutes.
Demo defaults (each flag still wins): --out output/demo, --trainer "ZeroshotCLIP CoOp FDBPL",
--cfg: tiny for ZeroshotCLIP and tiny_ep2 for the others, --datasets synthetic, --seeds 1,
--shots 4, --backbone and --teacher: the tiny checkpoints, --regions 16, --topk 5,
--ril-workers 0, --device cpu. Its numbers come from random tiny models: they show the
pipeline, not accuracy.

Flags:
EOF
  print_flags
}

set_demo_defaults() {
  DEMO=1
  DEFAULT_OUT=output/demo
  DEFAULT_TRAINER="ZeroshotCLIP CoOp FDBPL"
  DEFAULT_DATASETS=synthetic
  DEFAULT_SEEDS=1
  DEFAULT_SHOTS=4
  DEFAULT_TEACHER=""
  DEFAULT_REGIONS=16
  DEFAULT_TOPK=5
  DEFAULT_RIL_WORKERS=0
  DEFAULT_DEVICE=cpu
}

# make_tiny_clip PATH [make_tiny_clip.py flags]: a random tiny CLIP checkpoint, unless PATH exists.
make_tiny_clip() {
  local path="$1" output
  shift
  [ ! -f "$path" ] || return 0
  local cmd=("$PYTHON" "$REPO_ROOT/scripts/make_tiny_clip.py" --out "$path.tmp" "$@")
  if [ "${DRY_RUN:-}" = 1 ]; then
    echo "+ $(quote_cmd "${cmd[@]}")"
    return 0
  fi
  output="$("${cmd[@]}" 2>&1)" || { echo "$output" >&2; die "could not write the tiny CLIP $path"; }
  mv "$path.tmp" "$path"
  echo "[demo] ${output##*$'\n'}" | sed "s|$path.tmp|$path|"
}

setup_demo() {
  local student="$OUT/tiny_clip/student.pt" teacher="$OUT/tiny_clip/teacher.pt"
  DATA="$OUT/data"
  BACKBONE="${BACKBONE:-$student}"
  TEACHER="${TEACHER:-$teacher}"
  echo "== Demo: no dataset root given (--data or DATA), so this runs the Synthetic dataset (made under"
  echo "   $DATA) with random tiny CLIP models, on the $DEVICE. The numbers show that the pipeline"
  echo "   runs end to end, NOT accuracy. For the benchmark: DATA=/path/to/datasets bash scripts/base2new.sh"
  if [ "$BACKBONE" = "$student" ]; then make_tiny_clip "$student" --seed 1; fi
  if [ "$TEACHER" = "$teacher" ]; then make_tiny_clip "$teacher" --width 128 --layers 3 --seed 2; fi
}

parse_flags "$@"
DEMO=0
if [ -z "${DATA:-}" ]; then set_demo_defaults; fi
apply_defaults
require_one_value --shots "$SHOTS"
if [ "$DEMO" = 1 ]; then setup_demo; else require_data; fi
plan_methods_on_datasets base2new

for i in "${!TRAINERS[@]}"; do
  for dataset in $DATASETS; do
    for seed in $SEEDS; do
      name="$(stem "$dataset") ${TRAINERS[i]}/${CFG_NAMES[i]} ${SHOTS}-shot seed $seed"
      train_dir="$(base2new_dir train_base "$i" "$dataset" "$seed")"
      if needs_training "${TRAINERS[i]}"; then
        train_step "$i" "$dataset" "$seed" "$train_dir" "$SHOTS" base "train_base $name"
      fi
      evaluate_base_new "$i" "$dataset" "$seed" "$train_dir" "$name"
    done
  done
done

# shellcheck disable=SC2086
print_results base2new $DATASETS
if [ "$DEMO" = 1 ] && [ "${DRY_RUN:-}" != 1 ]; then
  echo
  echo "Demo finished in $SECONDS s. These numbers come from random tiny CLIP models: they show that"
  echo "the pipeline runs end to end, not accuracy. Run folders and logs: $OUT"
fi
