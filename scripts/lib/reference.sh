# Shared by the wrappers under scripts/<method>/ (sourced, never run). Each wrapper is one script of a
# reference repository (CoOp, MaPLe, PromptSRC, PromptKD) under its name there: the same positional
# arguments, train.py flags, overrides, config and run folders, run through lib/common.sh's steps
# (DATA from the environment, completion markers, settings checks, resume). A wrapper calls
# reference_setup, then reference_train / reference_eval for each train.py command of the reference.
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
PROG="$(basename "$(dirname "$0")")/$(basename "$0")"
DEFAULT_OUT=output
DEFAULT_SEEDS="1 2 3"

REFERENCE_ENV_HELP="Environment (the protocol scripts' variables; the reference edits DATA into its script):
  DATA        dataset root holding imagenet/, oxford_pets/, ... (required; train.py --root)
  OUT         output root of the run folders (default: output, under the current directory as there)
  CFG         method config: a name in configs/trainers/<TRAINER>/ or a .yaml path (default: the
              reference's); it names the run folders
  BACKBONE    student CLIP, as the protocol scripts' --backbone (default: the config's)
  LOAD_EPOCH  checkpoint epoch that eval-only runs load (default: OPTIM.MAX_EPOCH of the config and
              the overrides, which is the reference's fixed epoch for its config)
  DEVICE      cpu or cuda (default: cuda when available); DRY_RUN=1 prints the commands instead;
              VERBOSE=1 also streams each run's output; PYTHON (default python3)
Overrides after -- are appended to every train.py command, as the protocol scripts' -- KEY VALUE.
$RESUME_HELP"

# reference_setup TRAINER CFG "ARG ..." "$@": --help, the positional arguments into the variables named
# by ARG (then the -- overrides), the environment checked, method 0 = TRAINER with config CFG (or $CFG), a
# name in configs/trainers/<CONFIG_FOLDER, default TRAINER>/ or a .yaml path.
reference_setup() {
  local trainer="$1" cfg="$2" names name
  read -ra names <<< "$3"
  shift 3
  case "${1:-}" in -h|--help) usage; exit 0 ;; esac
  for name in "${names[@]}"; do
    [ $# -gt 0 ] && [ "$1" != -- ] || usage_error "needs ${#names[@]} arguments: ${names[*]}"
    printf -v "$name" '%s' "$1"
    shift
  done
  EXTRA_OPTS=()
  if [ $# -gt 0 ]; then
    [ "$1" = -- ] || usage_error "unexpected argument '$1' after ${names[*]}; config overrides follow --"
    shift
    EXTRA_OPTS=("$@")
    [ $(( ${#EXTRA_OPTS[@]} % 2 )) -eq 0 ] || usage_error "the config overrides after -- must be KEY VALUE pairs"
  fi
  OUT="${OUT:-$DEFAULT_OUT}" SEEDS="${SEEDS:-$DEFAULT_SEEDS}"
  check_numbers SEEDS "$SEEDS"
  if [ -n "${LOAD_EPOCH:-}" ]; then check_numbers LOAD_EPOCH "$LOAD_EPOCH"; fi
  case "${DEVICE:-}" in ""|cpu|cuda) ;; *) usage_error "DEVICE is '$DEVICE'; expected cpu or cuda (or unset)" ;; esac
  require_data
  TRAINERS=("$trainer") CFG_FILES=() CFG_NAMES=() CFG_BACKBONES=() MAX_EPOCHS=() INPUT_TAGS=()
  cfg="${CFG:-$cfg}"
  if [[ "$cfg" != *.yaml ]]; then
    cfg="$(config_file "$trainer" "$REPO_ROOT/configs/trainers/${CONFIG_FOLDER:-$trainer}" "$cfg")" || exit 1
  fi
  method_config 0 "$cfg"
  if [ -n "${DATASET:-}" ]; then check_datasets "$DATASET"; fi
}

# reference_cmd DATASET DIR [flags...]: CMD = train.py as the reference calls it (--root, --trainer, the
# dataset and method configs, --output-dir DIR, then the flags and overrides given); `--seed S` is among
# the flags where the reference passes one.
reference_cmd() {
  local dataset="$1" dir="$2"
  shift 2
  CMD=("$PYTHON" "$REPO_ROOT/train.py" --root "$DATA" "$@" --trainer "${TRAINERS[0]}"
       --dataset-config-file "$(dataset_config "$dataset")" --config-file "${CFG_FILES[0]}" --output-dir "$dir")
  if [ -n "${CFG_BACKBONES[0]}" ]; then CMD+=(--backbone "${CFG_BACKBONES[0]}"); fi
}

# reference_run DIR LABEL [KEY VALUE ...]: append the overrides to CMD, then the device and the -- overrides,
# and run it into DIR unless DIR is finished.
reference_run() {
  local dir="$1" label="$2"
  shift 2
  CMD+=("$@")
  end_cmd
  if step_pending "$dir" "$OUT" "$label" "${CMD[@]}"; then run_step "$dir" "$label" "${CMD[@]}"; fi
}

# reference_train DATASET SEED DIR LABEL [KEY VALUE ...]: train method 0 on DATASET into DIR.
reference_train() {
  local dataset="$1" seed="$2" dir="$3" label="$4"
  shift 4
  reference_cmd "$dataset" "$dir" --seed "$seed"
  reference_run "$dir" "$label" "$@"
}

# reference_eval DATASET SEED DIR MODEL_DIR LABEL [KEY VALUE ...]: evaluate MODEL_DIR's checkpoint of epoch
# LOAD_EPOCH (default: the config's last) on DATASET into DIR.
reference_eval() {
  local dataset="$1" seed="$2" dir="$3" model_dir="$4" label="$5"
  shift 5
  if [ -z "${LOAD_EPOCH:-}" ]; then read_config_values; fi
  reference_cmd "$dataset" "$dir" --seed "$seed" --model-dir "$model_dir" \
    --load-epoch "${LOAD_EPOCH:-${MAX_EPOCHS[0]}}" --eval-only
  reference_run "$dir" "$label" "$@"
}
