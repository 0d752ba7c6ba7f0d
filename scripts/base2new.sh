#!/usr/bin/env bash
# Base-to-new generalization: train on the base classes, evaluate eval-only on base and on new.
set -euo pipefail
# shellcheck source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

SCRIPT_FLAGS="--data --out --trainer --cfg --datasets --seeds --shots --backbone --load-epoch --teacher
  --regions --topk --ril-dir --ril-workers --nproc --device --random-clip --dry-run --verbose"
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

Demo: without a dataset root (no --data, no DATA), the script runs base-to-new on the Synthetic
dataset (generated under OUT/data) on the CPU with two tiny CLIPs pretrained here on drawn scenes
(scripts/pretrain_tiny_clip.py --preset student / teacher, about 5 minutes once, cached under
OUT/pretrained/), then prints the Base / New / HM table of ZeroshotCLIP, CoOp and FDBPL: an ordering
of methods on toy data, not the papers' numbers. --random-clip uses random tiny CLIPs instead
(scripts/make_tiny_clip.py, in OUT/tiny_clip/), 4 shots and tiny_ep2 configs: the whole pipeline in
about two minutes, with nothing to learn.
Demo defaults (each flag still wins): --out output/demo, --trainer "ZeroshotCLIP CoOp FDBPL" (any
trainer this script takes runs the same way), --cfg: tiny for ZeroshotCLIP and tiny_ep10 for the
others, --datasets synthetic, --seeds 1, --shots 16, --backbone and --teacher: the tiny CLIPs,
--regions 16, --topk 5, --ril-workers 0, --device cpu.

Flags:
EOF
  print_flags
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

# pretrain_tiny_clips STUDENT TEACHER: the tiny CLIPs pretrained here (scripts/pretrain_tiny_clip.py
# --preset student / teacher), each unless it and its sidecar PATH.json (written last) exist; "" skips
# one. Both train at once, one CPU thread each: the student's progress bar streams to the terminal,
# the teacher's output goes to PATH.log.
pretrain_tiny_clips() {
  local student="$1" teacher="$2" teacher_pid=""
  local script="$REPO_ROOT/scripts/pretrain_tiny_clip.py"
  [ -z "$student" ] || [ ! -f "$student.json" ] || [ ! -f "$student" ] || student=""
  [ -z "$teacher" ] || [ ! -f "$teacher.json" ] || [ ! -f "$teacher" ] || teacher=""
  if [ "${DRY_RUN:-}" = 1 ]; then
    [ -z "$student" ] || echo "+ $(quote_cmd "$PYTHON" "$script" --preset student --out "$student")"
    [ -z "$teacher" ] || echo "+ $(quote_cmd "$PYTHON" "$script" --preset teacher --out "$teacher")"
    return 0
  fi
  if [ -n "$teacher" ]; then
    mkdir -p "$(dirname "$teacher")"
    echo "[demo] pretraining the tiny teacher CLIP once, in the background (cached as $teacher; log: $teacher.log)"
    "$PYTHON" "$script" --preset teacher --out "$teacher" > "$teacher.log" 2>&1 &
    teacher_pid=$!
  fi
  if [ -n "$student" ]; then
    mkdir -p "$(dirname "$student")"
    echo "[demo] pretraining the tiny student CLIP once (cached as $student)"
    "$PYTHON" "$script" --preset student --out "$student" || {
      [ -z "$teacher_pid" ] || kill "$teacher_pid" 2>/dev/null || true
      die "could not pretrain the tiny student CLIP $student"
    }
  fi
  if [ -n "$teacher_pid" ]; then
    echo "[demo] waiting for the teacher's pretraining ($teacher.log)"
    wait "$teacher_pid" || { tail -n 20 "$teacher.log" >&2; die "could not pretrain the tiny teacher CLIP $teacher (log: $teacher.log)"; }
    grep "zero-shot of the saved file" "$teacher.log" | sed 's/^/[demo] teacher: /'
  fi
}

setup_demo() {
  local student teacher
  DATA="$OUT/data"
  # The tiny models run faster on one thread than on two competing ones (a CoOp run of the test suite:
  # 1.2 s against 46.6 s on the loaded 2-core machine); a user's OMP_NUM_THREADS wins.
  export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
  if [ "${RANDOM_CLIP:-}" = 1 ]; then
    student="$OUT/tiny_clip/student.pt" teacher="$OUT/tiny_clip/teacher.pt"
    MODELS_NOTE="random tiny CLIP models: the numbers show that the pipeline runs end to end, NOT accuracy"
  else
    student="$OUT/pretrained/student.pt" teacher="$OUT/pretrained/teacher.pt"
    MODELS_NOTE="tiny CLIPs pretrained here on drawn scenes (scripts/pretrain_tiny_clip.py): an ordering"
    MODELS_NOTE+=" of methods on toy data, not the papers' numbers"
  fi
  BACKBONE="${BACKBONE:-$student}"
  TEACHER="${TEACHER:-$teacher}"
  echo "== Demo: no dataset root given (--data or DATA), so this runs the Synthetic dataset (made under"
  echo "   $DATA) on the $DEVICE with $MODELS_NOTE."
  echo "   For the benchmark: DATA=/path/to/datasets bash scripts/base2new.sh"
  if [ "${RANDOM_CLIP:-}" = 1 ]; then
    if [ "$BACKBONE" = "$student" ]; then make_tiny_clip "$student" --seed 1; fi
    if [ "$TEACHER" = "$teacher" ]; then make_tiny_clip "$teacher" --width 128 --layers 3 --seed 2; fi
  else
    pretrain_tiny_clips "$([ "$BACKBONE" != "$student" ] || echo "$student")" \
      "$([ "$TEACHER" != "$teacher" ] || echo "$teacher")"
  fi
}

script_flag_spec() {
  case "$1" in
    --random-clip) echo "RANDOM_CLIP||demo only: random tiny CLIPs (scripts/make_tiny_clip.py, in OUT/tiny_clip/," \
                        "seconds to make) instead of the pretrained ones (OUT/pretrained/, pretrained once)" ;;
  esac
}

parse_demo_or_data_flags "$@"
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
  echo "Demo finished in $SECONDS s, with $MODELS_NOTE. Run folders and logs: $OUT"
fi
