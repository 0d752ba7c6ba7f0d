#!/usr/bin/env bash
# PromptKD base-to-new, both stages: the teacher (PromptSRC on a large CLIP), then the distilled student.
set -euo pipefail
# shellcheck source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

SCRIPT_FLAGS="--data --out --cfg --teacher-cfg --datasets --seeds --shots --student-shots --backbone --teacher
  --zero-shot-teacher --non-transductive --device --dry-run --verbose"
DEFAULT_DATASETS="$ELEVEN_DATASETS"
DEFAULT_CFG="$(default_cfg PromptKD)"
DEFAULT_TEACHER_CFG="vit_l14_c2_ep20_batch8_4+4ctx"
DATA_NOTE="required"
SHOTS_NOTE="one value"

# This script's own flags (and its wording of --cfg, --shots, --teacher); the rest are lib/common.sh's.
script_flag_spec() {
  case "$1" in
    --cfg) echo "CFG|NAME|stage-2 PromptKD config: a name in configs/trainers/PromptKD/ or a .yaml path" ;;
    --teacher-cfg) echo "TEACHER_CFG|NAME|stage-1 PromptSRC config: a name in configs/trainers/PromptKD/teacher/ or a .yaml path" ;;
    --shots) echo "SHOTS|K|labelled images per base class of stage 1 (DATASET.NUM_SHOTS); names the run folders; one value" ;;
    --student-shots) echo "STUDENT_SHOTS|K|unlabelled images per class of stage 2 (DATASET.NUM_SHOTS; <= 0: all, as published) (default: 0, or --shots with --non-transductive)" ;;
    --teacher) echo "TEACHER|NAME_OR_PATH|teacher CLIP, OpenAI name or checkpoint path: stage 1's --backbone and stage 2's TRAINER.PROMPTKD.TEACHER_BACKBONE" ;;
    --zero-shot-teacher) echo "ZERO_SHOT_TEACHER||skip stage 1 and distil from the zero-shot teacher CLIP" ;;
    --non-transductive) echo "NON_TRANSDUCTIVE||stage 2 on the training images of the base classes only (TRAINER.PROMPTKD.TRANSDUCTIVE False), FDBPL's setting; its folders end in _nontransductive" ;;
  esac
}

usage() {
  cat <<EOF
Usage: bash scripts/promptkd.sh --data DIR [FLAGS] [-- KEY VALUE ...]

PromptKD (CVPR 2024) base-to-new. For every dataset and seed:
  stage 1  train the teacher with labels: PromptSRC on the teacher CLIP, base classes, --shots
           shots; evaluate it eval-only on base and on new;
  stage 2  distil the student (PromptKD, --backbone) from it: transductive by default, i.e. on the
           unlabelled training images of ALL classes (--student-shots per class), the teacher run
           online on every batch and its class text features stored once in the run folder, with
           the published TRAINER.PROMPTKD.KD_WEIGHT: 200.0 on fgvc_aircraft, oxford_flowers and dtd,
           1000.0 on the others (-- TRAINER.PROMPTKD.KD_WEIGHT 500.0 sets another); evaluate it
           eval-only on base and on new with those stored features.
Then prints the Base / New / HM table of both (scripts/parse_results.py). Run folders:
  OUT/base2new/{train_base,test_base,test_new}/<dataset>/shots_<K>/{PromptSRC,PromptKD}/<cfg>/seed<S>/
$RESUME_HELP

Flags:
EOF
  print_flags
}

read_flags "$@"
LOAD_EPOCH=""  # eval-only runs load the last epoch of their config
require_one_value --shots "$SHOTS"
if [ -z "$STUDENT_SHOTS" ]; then
  if [ "$NON_TRANSDUCTIVE" = 1 ]; then STUDENT_SHOTS="$SHOTS"; else STUDENT_SHOTS=0; fi
fi
require_one_value --student-shots "$STUDENT_SHOTS"
check_numbers STUDENT_SHOTS "$STUDENT_SHOTS"

kd_cfg="$(config_file PromptKD "$REPO_ROOT/configs/trainers/PromptKD" "$CFG")"
kd_name="$(stem "$CFG")"
kd_opts=()
if [ "$NON_TRANSDUCTIVE" = 1 ]; then
  kd_name+="_nontransductive"
  kd_opts+=(TRAINER.PROMPTKD.TRANSDUCTIVE False)
fi
if [ "$ZERO_SHOT_TEACHER" = 1 ]; then
  TRAINERS=(PromptKD) CFG_FILES=("$kd_cfg") CFG_NAMES=("$kd_name") CFG_BACKBONES=("$BACKBONE")
else
  teacher_cfg="$(config_file "PromptKD teacher" "$REPO_ROOT/configs/trainers/PromptKD/teacher" "$TEACHER_CFG")"
  TRAINERS=(PromptSRC PromptKD) CFG_FILES=("$teacher_cfg" "$kd_cfg") CFG_NAMES=("$(stem "$TEACHER_CFG")" "$kd_name")
  CFG_BACKBONES=("$TEACHER" "$BACKBONE")
fi
MAX_EPOCHS=() INPUT_TAGS=()
KD=$((${#TRAINERS[@]} - 1))  # index of PromptKD; 1 means stage 1 (index 0) runs
# shellcheck disable=SC2086  # DATASETS is a list
check_datasets $DATASETS
print_plan promptkd "datasets $DATASETS | teacher $TEACHER | student shots $STUDENT_SHOTS"

# kd_weight DATASET: the published TRAINER.PROMPTKD.KD_WEIGHT (PromptKD's scripts/promptkd/base2new_train.sh).
kd_weight() {
  case "$(stem "$1")" in
    fgvc_aircraft|oxford_flowers|dtd) echo 200.0 ;;  # a float, as yacs requires of this key
    *) echo 1000.0 ;;
  esac
}

for dataset in $DATASETS; do
  for seed in $SEEDS; do
    name="$(stem "$dataset") ${SHOTS}-shot seed $seed"
    teacher_opts=(TRAINER.PROMPTKD.TEACHER_BACKBONE "$TEACHER" TRAINER.PROMPTKD.TEACHER_DIR "")
    if [ "$KD" = 1 ]; then
      teacher_dir="$(base2new_dir train_base 0 "$dataset" "$seed")"
      train_step 0 "$dataset" "$seed" "$teacher_dir" "$SHOTS" base "stage 1 teacher $name"
      evaluate_base_new 0 "$dataset" "$seed" "$teacher_dir" "teacher $name"
      read_config_values
      teacher_opts=(TRAINER.PROMPTKD.TEACHER_BACKBONE "$TEACHER" TRAINER.PROMPTKD.TEACHER_DIR "$teacher_dir"
                    TRAINER.PROMPTKD.TEACHER_EPOCH "${MAX_EPOCHS[0]}")
    fi
    student_dir="$(base2new_dir train_base "$KD" "$dataset" "$seed")"
    label="stage 2 PromptKD $name, ${STUDENT_SHOTS}-shot unlabelled"
    train_cmd "$KD" "$dataset" "$seed" "$student_dir"
    CMD+=(DATASET.NUM_SHOTS "$STUDENT_SHOTS" DATASET.SUBSAMPLE_CLASSES base "${teacher_opts[@]}"
          TRAINER.PROMPTKD.KD_WEIGHT "$(kd_weight "$dataset")" ${kd_opts[@]+"${kd_opts[@]}"})
    end_cmd
    if step_pending "$student_dir" "$OUT" "$label" "${CMD[@]}"; then run_step "$student_dir" "$label" "${CMD[@]}"; fi
    evaluate_base_new "$KD" "$dataset" "$seed" "$student_dir" "PromptKD $name"
  done
done

# shellcheck disable=SC2086
print_results base2new $DATASETS
