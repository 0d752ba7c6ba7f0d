#!/usr/bin/env bash
# Out-of-distribution detection with the models the other protocol scripts trained (no retraining).
set -euo pipefail
# shellcheck source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

SCRIPT_FLAGS="--data --out --benchmark --trainer --cfg --datasets --seeds --shots --backbone --load-epoch
  --ood-root --ood-sets --mcm-temperature --device --random-clip --dry-run --verbose"
DEFAULT_BENCHMARK=openset
DEFAULT_DATASETS="$ELEVEN_DATASETS"
DEFAULT_OOD_SETS="iNaturalist SUN Places Textures"
OPTIONAL_OOD_SETS="NINCO"  # scored where present
DEFAULT_MCM_TEMPERATURE=1
DATA_NOTE="unset: run the demo"
SHOTS_NOTE="one value"

usage() {
  cat <<EOF
Usage: bash scripts/ood.sh [FLAGS] [-- KEY VALUE ...]

Out-of-distribution (OOD) detection. For every trainer, dataset and seed, one evaluation pass
(scripts/ood_eval.py) scores the in-distribution (ID) and OOD test images with MSP, MCM, max-logit,
energy and, for models with negative prompts (FDBPL, *_FDBPL with TRAINER.FDBPL.DUAL_PROMPTS), CLIPN's
competing-to-win and agreeing-to-differ; writes ood_scores.npz and the AUROC / FPR95 / AUPR lines into
the run folder, then prints the table (scripts/parse_results.py --protocol ood). Two benchmarks:
  openset   ID: the base classes' test images; OOD: the new classes' test images of the same dataset,
            scored against the base classes by the model scripts/base2new.sh trained on them in
            OUT/base2new/train_base/<dataset>/shots_<K>/<TRAINER>/<cfg>/seed<S>/ (run it first with
            the same --trainer, --cfg, --datasets, --seeds, --shots and --backbone).
  imagenet  ID: ImageNet val (all 1,000 classes); OOD: iNaturalist, SUN, Places and Textures as MCM,
            LoCoOp and CLIPN lay them out under --ood-root (datasets/ood_sets.py), and NINCO where
            present; scored by the ImageNet model scripts/cross_dataset.sh trained in
            OUT/imagenet/<TRAINER>/<cfg>_<K>shots/seed<S>/ (run it first; --datasets is not used).
Run folders: OUT/ood/<benchmark>/<dataset>/shots_<K>/<TRAINER>/<cfg>/seed<S>/
$RESUME_HELP

Demo: without a dataset root (no --data, no DATA), the open-set benchmark runs on the demo of
scripts/base2new.sh (the Synthetic dataset, tiny CLIPs pretrained here, on the CPU), which this script
runs first (finished steps are skipped): ZeroshotCLIP, CoOp and FDBPL on toy data, not the papers'
numbers. Demo defaults (each flag still wins): --out output/demo, --trainer "ZeroshotCLIP CoOp FDBPL",
--datasets synthetic, --seeds 1, --shots 16 (4 with --random-clip), --backbone: the tiny student CLIP,
--device cpu.

Flags:
EOF
  print_flags
}

script_flag_spec() {
  case "$1" in
    --benchmark) echo "BENCHMARK|openset or imagenet|which OOD benchmark (see above)" ;;
    --datasets) echo "DATASETS|\"NAME ...\"|openset: the datasets whose base classes are ID (names in" \
                     "configs/datasets/ or .yaml paths)" ;;
    --ood-root) echo "OOD_ROOT|DIR|imagenet: the folder holding the OOD sets (default: the dataset root)" ;;
    --ood-sets) echo "OOD_SETS|\"NAME ...\"|imagenet: the OOD sets that must be present ($OPTIONAL_OOD_SETS is" \
                     "scored where present)" ;;
    --mcm-temperature) echo "MCM_TEMPERATURE|T|temperature of MCM's softmax(cosine / T)" ;;
    --random-clip) echo "RANDOM_CLIP||demo only: the random tiny CLIPs of scripts/base2new.sh --random-clip" ;;
  esac
}

# run_demo_training: scripts/base2new.sh's demo with this sweep's flags (it skips what is finished), and
# its tiny student CLIP as the backbone unless --backbone names another.
run_demo_training() {
  local cmd=(bash "$REPO_ROOT/scripts/base2new.sh" --out "$OUT" --trainer "$TRAINER" --datasets "$DATASETS"
             --seeds "$SEEDS" --shots "$SHOTS" --device "$DEVICE")
  if [ -n "${CFG:-}" ]; then cmd+=(--cfg "$CFG"); fi
  if [ -n "${BACKBONE:-}" ]; then cmd+=(--backbone "$BACKBONE"); fi
  if [ "${RANDOM_CLIP:-}" = 1 ]; then cmd+=(--random-clip); fi
  if [ "${DRY_RUN:-}" = 1 ]; then cmd+=(--dry-run); fi
  if [ "${VERBOSE:-}" = 1 ]; then cmd+=(--verbose); fi
  echo "== Demo: the base-to-new demo first (scripts/base2new.sh; finished steps are skipped)"
  env -u DATA "${cmd[@]}" -- ${EXTRA_OPTS[@]+"${EXTRA_OPTS[@]}"}
  if [ "${RANDOM_CLIP:-}" = 1 ]; then BACKBONE="${BACKBONE:-$OUT/tiny_clip/student.pt}"
  else BACKBONE="${BACKBONE:-$OUT/pretrained/student.pt}"
  fi
  DATA="$OUT/data"
}

# ood_step I DATASET SEED DIR MODEL_DIR LABEL [ood_eval.py flags and overrides...]: the OOD pass of method I
# into DIR, loading MODEL_DIR (a finished training run) unless the method has nothing to train.
ood_step() {
  local i="$1" dataset="$2" seed="$3" dir="$4" model_dir="$5" label="$6" flags=()
  shift 6
  if needs_training "${TRAINERS[i]}"; then
    if [ "${DRY_RUN:-}" != 1 ] && [ ! -f "$model_dir/$MARKER" ]; then
      die "$label: no finished training run in $model_dir ($MARKER missing); train it first with" \
          "scripts/$TRAINING_SCRIPT and the same --trainer, --cfg, --seeds, --shots and --backbone"
    fi
    if [ -z "${LOAD_EPOCH:-}" ]; then read_config_values; fi
    flags+=(--model-dir "$model_dir" --load-epoch "${LOAD_EPOCH:-${MAX_EPOCHS[i]}}")
  fi
  train_cmd "$i" "$dataset" "$seed" "$dir" "${flags[@]}" --mcm-temperature "$MCM_TEMPERATURE"
  CMD[1]="$REPO_ROOT/scripts/ood_eval.py"  # train.py's flags, read by the OOD pass
  CMD+=("$@")
  end_cmd
  step_pending "$dir" "$OUT" "$label" "${CMD[@]}" || return 0
  run_step "$dir" "$label" "${CMD[@]}"
}

ood_dir() { echo "$OUT/ood/$BENCHMARK/$(stem "$2")/shots_$SHOTS/${TRAINERS[$1]}/${CFG_NAMES[$1]}/seed$3"; }

openset_sweep() {
  local i dataset seed name
  for i in "${!TRAINERS[@]}"; do
    for dataset in $DATASETS; do
      for seed in $SEEDS; do
        name="openset $(stem "$dataset") ${TRAINERS[i]}/${CFG_NAMES[i]} ${SHOTS}-shot seed $seed"
        ood_step "$i" "$dataset" "$seed" "$(ood_dir "$i" "$dataset" "$seed")" \
          "$(base2new_dir train_base "$i" "$dataset" "$seed")" "$name" --ood-set new \
          DATASET.NUM_SHOTS "$SHOTS" DATASET.SUBSAMPLE_CLASSES base
      done
    done
  done
}

imagenet_sweep() {
  local i seed name set sets=()
  for set in $OOD_SETS; do sets+=(--ood-set "$set"); done
  for set in $OPTIONAL_OOD_SETS; do
    [[ " $OOD_SETS " == *" $set "* ]] || sets+=(--if-present "$set")
  done
  for i in "${!TRAINERS[@]}"; do
    for seed in $SEEDS; do
      name="imagenet ${TRAINERS[i]}/${CFG_NAMES[i]} ${SHOTS}-shot seed $seed"
      ood_step "$i" imagenet "$seed" "$(ood_dir "$i" imagenet "$seed")" \
        "$OUT/imagenet/${TRAINERS[i]}/${CFG_NAMES[i]}_${SHOTS}shots/seed$seed" "$name" \
        --ood-root "${OOD_ROOT:-$DATA}" "${sets[@]}" DATASET.NUM_SHOTS "$SHOTS" DATASET.SUBSAMPLE_CLASSES all
    done
  done
}

parse_demo_or_data_flags "$@"
[[ "$MCM_TEMPERATURE" =~ ^[0-9]*\.?[0-9]+$ ]] ||
  usage_error "--mcm-temperature/MCM_TEMPERATURE is '$MCM_TEMPERATURE'; expected a positive number"
case "$BENCHMARK" in
  openset) TRAINING_SCRIPT=base2new.sh ;;
  imagenet) TRAINING_SCRIPT=cross_dataset.sh CFG_PROTOCOL=cross DATASETS=imagenet ;;
  *) usage_error "--benchmark/BENCHMARK is '$BENCHMARK'; expected openset or imagenet" ;;
esac
if [ "$DEMO" = 1 ]; then
  [ "$BENCHMARK" = openset ] || usage_error "the demo runs the openset benchmark; give --data for imagenet"
  run_demo_training
else
  require_data
fi
plan_methods_on_datasets "ood $BENCHMARK"
if [ "$BENCHMARK" = openset ]; then openset_sweep; else imagenet_sweep; fi

if [ "${DRY_RUN:-}" != 1 ]; then
  cfgs=()
  for i in "${!TRAINERS[@]}"; do cfgs+=("${CFG_NAMES[i]}"); done
  stems=()
  for dataset in $DATASETS; do stems+=("$(stem "$dataset")"); done
  echo
  # shellcheck disable=SC2086  # SEEDS is a list
  "$PYTHON" "$REPO_ROOT/scripts/parse_results.py" "$OUT" --protocol ood --benchmark "$BENCHMARK" \
    --trainers "${TRAINERS[@]}" --cfg "${cfgs[@]}" --datasets "${stems[@]}" --seeds $SEEDS --shots "$SHOTS" \
    --require-complete || die "the OOD table above has incomplete cells, although every step finished"
fi
