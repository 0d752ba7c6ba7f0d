#!/usr/bin/env bash
# CasPL base-to-new, both stages: boosting prompts distilled from a teacher, then cascaded base methods.
set -euo pipefail
# shellcheck source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

SCRIPT_FLAGS="--data --out --trainer --cfg --boost-cfg --teacher-source --teacher --teacher-dir --teacher-epoch
  --boost-shots --datasets --seeds --shots --backbone --regions --topk --ril-dir --ril-workers --nproc --device
  --dry-run --verbose"
DEFAULT_DATASETS="$ELEVEN_DATASETS"
DEFAULT_TRAINER="CoOp_CasPL MaPLe_CasPL PromptSRC_CasPL"
DEFAULT_BOOST_CFG="$(default_cfg CasPL_Boost)"
DEFAULT_TEACHER_SOURCE=online
DEFAULT_BOOST_SHOTS=0
DATA_NOTE="required"
SHOTS_NOTE="one value"

# This script's own flags (and its wording of --trainer, --cfg, --teacher, --shots); the rest are lib/common.sh's.
script_flag_spec() {
  case "$1" in
    --trainer) echo "TRAINER|\"NAME ...\"|stage-2 trainers, each a base method cascaded with the boosting prompts: CoOp_CasPL, MaPLe_CasPL, PromptSRC_CasPL" ;;
    --cfg) echo "CFG|\"NAME ...\"|stage-2 config of each trainer: a name in configs/trainers/<TRAINER>/ or a .yaml path; one for all or one per trainer (default: each base method's published setting)" ;;
    --boost-cfg) echo "BOOST_CFG|NAME|stage-1 config: a name in configs/trainers/CasPL_Boost/ or a .yaml path" ;;
    --teacher-source) echo "TEACHER_SOURCE|online or ril|stage-1 teacher: online runs the teacher CLIP on every batch (the paper); ril distils from an RIL table, built first when missing (teacher-free training)" ;;
    --teacher) echo "TEACHER|NAME_OR_PATH|teacher of stage 1: OpenAI CLIP name, checkpoint path or open_clip:MODEL/PRETRAINED (TRAINER.CASPL.TEACHER_BACKBONE, or the RIL table's teacher)" ;;
    --teacher-dir) echo "TEACHER_DIR|DIR|online teacher of stage 1 tuned by PromptSRC on --teacher: that run's folder (e.g. scripts/promptkd.sh's stage-1 teacher run) (TRAINER.CASPL.TEACHER_DIR) (default: none, the zero-shot teacher)" ;;
    --teacher-epoch) echo "TEACHER_EPOCH|N|checkpoint epoch of --teacher-dir; 0: model-best.pth.tar (TRAINER.CASPL.TEACHER_EPOCH) (default: the config's)" ;;
    --boost-shots) echo "BOOST_SHOTS|K|unlabelled training images per class of stage 1, all classes (DATASET.NUM_SHOTS; <= 0: all, as the paper)" ;;
    --shots) echo "SHOTS|K|labelled images per base class of stage 2 (DATASET.NUM_SHOTS); names the run folders; one value" ;;
  esac
}

usage() {
  cat <<EOF
Usage: bash scripts/caspl.sh --data DIR [FLAGS] [-- KEY VALUE ...]

CasPL (ECCV 2024) base-to-new. For every dataset and seed:
  stage 1  CasPL_Boost: boosting prompts in both towers of --backbone, distilled from --teacher on
           the unlabelled training images of ALL classes (--boost-shots per class), online or from
           an RIL table (--teacher-source); evaluated eval-only on base and on new on its own;
  stage 2  every --trainer on the base classes (--shots shots) with its own loss, its prompts
           cascaded with the frozen boosting prompts of stage 1 (TRAINER.CASPL.BOOST_DIR);
           evaluated eval-only on base and on new (the run folder holds both prompt groups).
Then prints the Base / New / HM table (scripts/parse_results.py). Run folders (cfg names end in
_<teacher source>; use another --out for another --boost-cfg):
  OUT/base2new/train_all/<dataset>/shots_<boost K>/CasPL_Boost/<boost cfg>_<source>/seed<S>/
  OUT/base2new/{train_base,test_base,test_new}/<dataset>/shots_<K>/<TRAINER>/<cfg>_<source>/seed<S>/
$RESUME_HELP

Flags:
EOF
  print_flags
}

read_flags "$@"
LOAD_EPOCH=""  # eval-only runs load the last epoch of their config
require_one_value --shots "$SHOTS"
require_one_value --boost-shots "$BOOST_SHOTS"
check_numbers BOOST_SHOTS "$BOOST_SHOTS"
check_numbers TEACHER_EPOCH "$TEACHER_EPOCH"
case "$TEACHER_SOURCE" in online|ril) ;; *) usage_error "--teacher-source is '$TEACHER_SOURCE'; expected online or ril" ;; esac
if [ "$TEACHER_SOURCE" = ril ] && [ -n "$TEACHER_DIR$TEACHER_EPOCH" ]; then
  usage_error "--teacher-dir and --teacher-epoch choose a tuned online teacher; an RIL table (--teacher-source ril) holds the zero-shot teacher's labels"
fi
if [ -n "$TEACHER_DIR" ] && [ ! -d "$TEACHER_DIR" ] && [ "${DRY_RUN:-}" != 1 ]; then
  die "--teacher-dir '$TEACHER_DIR' is not a directory; pass the output folder of the teacher's PromptSRC run"
fi
for trainer in $TRAINER; do
  [[ "$trainer" == *_CasPL ]] || usage_error "--trainer '$trainer' is not a CasPL stage-2 trainer (CoOp_CasPL, MaPLe_CasPL, PromptSRC_CasPL)"
done
resolve_methods
TRAINERS=(CasPL_Boost "${TRAINERS[@]}") CFG_FILES=("" "${CFG_FILES[@]}") CFG_NAMES=("" "${CFG_NAMES[@]}")
CFG_BACKBONES=("" "${CFG_BACKBONES[@]}")
method_config 0 "$BOOST_CFG"
for i in "${!CFG_NAMES[@]}"; do CFG_NAMES[i]+="_$TEACHER_SOURCE"; done
# shellcheck disable=SC2086  # DATASETS is a list
check_datasets $DATASETS
print_plan caspl "datasets $DATASETS | teacher $TEACHER ($TEACHER_SOURCE) | boost shots $BOOST_SHOTS"

# boost DATASET SEED DIR: stage 1 into DIR (from an RIL table, built first, with --teacher-source ril).
boost() {
  local dataset="$1" seed="$2" dir="$3" label teacher_opts
  label="stage 1 CasPL_Boost $(stem "$dataset") ${BOOST_SHOTS}-shot unlabelled seed $seed, teacher $TEACHER ($TEACHER_SOURCE)"
  if [ "$TEACHER_SOURCE" = ril ]; then
    set_table 0 "$dataset" "$seed" "$BOOST_SHOTS" all
    teacher_opts=(TRAINER.CASPL.TEACHER_SOURCE ril TRAINER.FDBPL.RIL_TABLE "$TABLE")
  else
    teacher_opts=(TRAINER.CASPL.TEACHER_SOURCE online TRAINER.CASPL.TEACHER_BACKBONE "$TEACHER")
    if [ -n "$TEACHER_DIR" ]; then teacher_opts+=(TRAINER.CASPL.TEACHER_DIR "$TEACHER_DIR"); fi
    if [ -n "$TEACHER_EPOCH" ]; then teacher_opts+=(TRAINER.CASPL.TEACHER_EPOCH "$TEACHER_EPOCH"); fi
  fi
  train_cmd 0 "$dataset" "$seed" "$dir"
  CMD+=(DATASET.NUM_SHOTS "$BOOST_SHOTS" DATASET.SUBSAMPLE_CLASSES all "${teacher_opts[@]}")
  end_cmd
  step_pending "$dir" "$OUT" "$label" "${CMD[@]}" || return 0
  if [ "$TEACHER_SOURCE" = ril ]; then ensure_table 0 "$dataset" "$seed" "$BOOST_SHOTS" all; fi
  run_step "$dir" "$label" "${CMD[@]}"
}

for dataset in $DATASETS; do
  for seed in $SEEDS; do
    name="$(stem "$dataset") ${SHOTS}-shot seed $seed"
    boost_dir="$(base2new_dir train_all 0 "$dataset" "$seed" "$BOOST_SHOTS")"
    boost "$dataset" "$seed" "$boost_dir"
    evaluate_base_new 0 "$dataset" "$seed" "$boost_dir" "CasPL_Boost $name"
    for i in $(seq 1 $((${#TRAINERS[@]} - 1))); do
      train_dir="$(base2new_dir train_base "$i" "$dataset" "$seed")"
      label="stage 2 ${TRAINERS[i]} $name"
      train_cmd "$i" "$dataset" "$seed" "$train_dir"
      CMD+=(DATASET.NUM_SHOTS "$SHOTS" DATASET.SUBSAMPLE_CLASSES base TRAINER.CASPL.BOOST_DIR "$boost_dir")
      end_cmd
      if step_pending "$train_dir" "$OUT" "$label" "${CMD[@]}"; then run_step "$train_dir" "$label" "${CMD[@]}"; fi
      evaluate_base_new "$i" "$dataset" "$seed" "$train_dir" "${TRAINERS[i]} $name"
    done
  done
done

# shellcheck disable=SC2086
print_results base2new $DATASETS
