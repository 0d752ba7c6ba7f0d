# Shared by the protocol scripts (sourced, never run): flags and their environment variables,
# method and dataset configs, run folders with completion markers, RIL tables, train.py command
# lines and the results table. A script sets SCRIPT_FLAGS and its DEFAULT_<VAR> values, defines
# usage(), then calls parse_flags "$@" and apply_defaults.

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PROG="$(basename "$0")"
PYTHON="${PYTHON:-python3}"
export PYTHONPATH="$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}"  # `python -m ril` from any directory
# Possibly empty arrays expand as ${A[@]+"${A[@]}"}: bash < 4.4 calls an empty "${A[@]}" unbound.
MARKER="finished.txt"  # written into a step's folder once its command exited 0
CONSOLE="console.txt"  # every attempt's stdout and stderr, appended
TABLES_SEEN=""  # RIL table folders already handled by this run
ELEVEN_DATASETS="imagenet caltech101 oxford_pets stanford_cars oxford_flowers food101 fgvc_aircraft sun397 dtd eurosat ucf101"
IMAGENET_VARIANTS="imagenetv2 imagenet_sketch imagenet_a imagenet_r"

# Defaults every protocol script shares; a script overrides what differs before parse_flags.
DEFAULT_OUT=output
DEFAULT_TRAINER=FDBPL
DEFAULT_SEEDS="1 2 3"
DEFAULT_SHOTS=16
DEFAULT_TEACHER=ViT-L/14
DEFAULT_REGIONS=500
DEFAULT_TOPK=20
DEFAULT_RIL_WORKERS=4
DEFAULT_NPROC=1
CFG_PROTOCOL=base2new  # column of DEFAULT_CFGS; few_shot.sh and the transfer scripts set theirs
# Default method config per trainer and protocol: the paper's base-to-new config, and the published
# *_few_shot and *_cross_datasets configs where they exist ("-": the protocol does not run that trainer).
# FDBPL-family trainers default to FDBPL's ViT-B/32 student, the others to ViT-B/16; --backbone
# ViT-B/16 or ViT-B/32 puts every trainer of a sweep on that student (see method_config).
# trainer        base2new                        few_shot                                cross (cross_dataset, DG)
DEFAULT_CFGS="
ZeroshotCLIP     vit_b16                         vit_b16                                 vit_b16
CoOp             vit_b16_ep50_ctxv1              vit_b16_ep50                            vit_b16_ep50_ctxv1
MaPLe            vit_b16_c2_ep5_batch4_2ctx      vit_b16_c2_ep5_batch4_2ctx              vit_b16_c2_ep5_batch4_2ctx_cross_datasets
PromptSRC        vit_b16_c2_ep20_batch4_4+4ctx   vit_b16_c2_ep50_batch4_4+4ctx_few_shot  vit_b16_c2_ep20_batch4_4+4ctx_cross_datasets
FDBPL            vit_b32_ep50                    vit_b32_ep50                            vit_b32_ep50
CoOp_FDBPL       vit_b32_ep50_ctxv1              vit_b32_ep50_ctxv1                      vit_b32_ep50_ctxv1
MaPLe_FDBPL      vit_b32_c2_ep5_batch4_2ctx      vit_b32_c2_ep5_batch4_2ctx              vit_b32_c2_ep5_batch4_2ctx
PromptSRC_FDBPL  vit_b32_c2_ep20_batch4_4+4ctx   vit_b32_c2_ep20_batch4_4+4ctx           vit_b32_c2_ep20_batch4_4+4ctx
CoCoOp           vit_b16_c4_ep10_batch1_ctxv1    -                                       vit_b16_c4_ep10_batch1_ctxv1
CoCoOp_FDBPL     vit_b32_c4_ep10_batch1_ctxv1    vit_b32_c4_ep10_batch1_ctxv1            vit_b32_c4_ep10_batch1_ctxv1
IVLP             vit_b16_c2_ep5_batch4_2+2ctx    -                                       vit_b16_c2_ep5_batch4_2+2ctx
VPT              vit_b16_c2_ep5_batch4_4         -                                       vit_b16_c2_ep5_batch4_4
VPT_FDBPL        vit_b32_c2_ep5_batch4_4         vit_b32_c2_ep5_batch4_4                 vit_b32_c2_ep5_batch4_4
PromptKD         vit_b16_c2_ep20_batch8_4+4ctx   -                                       -
CasPL_Boost      vit_b16_c2_ep20_batch8_4+4ctx   -                                       -
CoOp_CasPL       vit_b16_ep50_ctxv1              -                                       -
MaPLe_CasPL      vit_b16_c2_ep5_batch4_2ctx      -                                       -
PromptSRC_CasPL  vit_b16_c2_ep20_batch4_4+4ctx   -                                       -
"
TRANSFER_FLAGS="--data --out --trainer --cfg --source-dataset --target-datasets --seeds --shots --backbone
  --load-epoch --teacher --regions --topk --ril-dir --ril-workers --nproc --device --dry-run --verbose"
SETTINGS="settings.txt"  # the command of a step, written into its folder before it runs
RESUME_HELP="A step counts as finished only when its folder holds $MARKER, written after its command
exits 0 (with the log file that attempt wrote). Finished steps are skipped and unfinished ones rerun
(Dassl resumes an interrupted training from its checkpoints), so a killed sweep continues where it
stopped. Each step's folder records its command in $SETTINGS; a step whose folder records other
settings (trainer, configs, overrides, data root, backbone, RIL table, load epoch) stops the sweep
before anything runs and names the differences: give the new sweep another --out, or delete the
folder."

# set_demo_defaults: the demo's defaults (no --data and no DATA): Synthetic in output/demo, the tiny
# CLIPs, 16 shots and tiny_ep10 configs (4 shots and tiny_ep2 with --random-clip: nothing to learn, be
# quick), small RIL tables, the CPU.
set_demo_defaults() {
  DEMO=1
  DEFAULT_OUT=output/demo
  DEFAULT_TRAINER="ZeroshotCLIP CoOp FDBPL"
  DEFAULT_DATASETS=synthetic
  DEFAULT_SEEDS=1
  DEFAULT_SHOTS=16
  DEMO_CFG=tiny_ep10
  if [ "${RANDOM_CLIP:-}" = 1 ]; then DEFAULT_SHOTS=4 DEMO_CFG=tiny_ep2; fi
  DEFAULT_TEACHER=""
  DEFAULT_REGIONS=16
  DEFAULT_TOPK=5
  DEFAULT_RIL_WORKERS=0
  DEFAULT_DEVICE=cpu
}

# parse_demo_or_data_flags "$@": the flags; the demo's defaults when no DATA is given (--random-clip is the
# demo's only); the defaults; one --shots value.
parse_demo_or_data_flags() {
  parse_flags "$@"
  DEMO=0
  if [ -z "${DATA:-}" ]; then set_demo_defaults; fi
  if [ "$DEMO" = 0 ] && [ "${RANDOM_CLIP:-}" = 1 ]; then
    usage_error "--random-clip applies to the demo only (no --data and no DATA)"
  fi
  apply_defaults
  require_one_value --shots "$SHOTS"
}

die() { echo "$PROG: $*" >&2; exit 1; }
usage_error() { echo "$PROG: $* (see $PROG --help)" >&2; exit 2; }

# flag_spec FLAG: "VARIABLE|METAVAR|help" (no METAVAR: a switch, whose variable becomes 1). A script
# may define script_flag_spec FLAG for flags of its own or its wording of shared ones (nothing else).
flag_spec() {
  local spec=""
  if declare -F script_flag_spec >/dev/null; then spec="$(script_flag_spec "$1")"; fi
  if [ -n "$spec" ]; then echo "$spec"; else common_flag_spec "$1"; fi
}

common_flag_spec() {
  case "$1" in
    --data) echo "DATA|DIR|dataset root holding imagenet/, oxford_pets/, ... (train.py --root)${DATA_NOTE:+; $DATA_NOTE}" ;;
    --out) echo "OUT|DIR|output root of every run folder (and of RIL tables, unless --ril-dir)" ;;
    --trainer) echo "TRAINER|\"NAME ...\"|trainers to run, e.g. \"ZeroshotCLIP CoOp FDBPL\"" ;;
    --cfg) echo "CFG|\"NAME ...\"|method config of each trainer: a name in configs/trainers/<TRAINER>/ or a" \
                ".yaml path; one for all trainers or one per trainer (default: each trainer's published" \
                "config, listed under 'Default configs')" ;;
    --datasets) echo "DATASETS|\"NAME ...\"|datasets: names in configs/datasets/ or .yaml paths" ;;
    --source-dataset) echo "SOURCE_DATASET|NAME|dataset the model is trained on (all classes): a name in" \
                           "configs/datasets/ or a .yaml path" ;;
    --target-datasets) echo "TARGET_DATASETS|\"NAME ...\"|datasets the source model is evaluated on" ;;
    --seeds) echo "SEEDS|\"S ...\"|seeds (SEED; also selects the few-shot split)" ;;
    --shots) echo "SHOTS|\"K ...\"|training images per class (DATASET.NUM_SHOTS; <= 0: all)${SHOTS_NOTE:+; $SHOTS_NOTE}" ;;
    --subsample) echo "SUBSAMPLE|base, all or new|classes the tables cover (DATASET.SUBSAMPLE_CLASSES):" \
                      "base for base2new, all for the other protocols" ;;
    --backbone) echo "BACKBONE|NAME_OR_PATH|student CLIP of every trainer. ViT-B/16 or ViT-B/32: each config" \
                     "named vit_b16 or vit_b32 is replaced by its twin named for this student (an error" \
                     "names a missing twin), so <cfg> in the run folders names the student. Any other" \
                     "value (RN50, a checkpoint path) is passed as train.py --backbone and appended to" \
                     "<cfg> (a path as its file name and a checksum) (default: each config's" \
                     "MODEL.BACKBONE.NAME)" ;;
    --load-epoch) echo "LOAD_EPOCH|N|checkpoint epoch that eval-only runs load (default: OPTIM.MAX_EPOCH of" \
                       "each config and the trailing opts, read through trainers/config.py)" ;;
    --teacher) echo "TEACHER|NAME_OR_PATH|RIL teacher of FDBPL-family trainers (FDBPL, *_FDBPL): OpenAI CLIP" \
                    "name, checkpoint path or open_clip:MODEL/PRETRAINED" ;;
    --regions) echo "REGIONS|M|regions per image in an RIL table" ;;
    --topk) echo "TOPK|K|teacher classes kept per region in an RIL table" ;;
    --ril-dir) echo "RIL_DIR|DIR|folder of the RIL tables, laid out" \
                    "<dataset>/shots_<K>/<subsample>/<teacher>_<size>_<interpolation>_m<M>_k<K>/seed<S>/table.h5" \
                    "(seed_all when K <= 0: one table serves every seed) (default: OUT/ril)" ;;
    --ril-workers) echo "RIL_WORKERS|N|image-decoding processes of ril precompute (its --workers)" ;;
    --nproc) echo "NPROC|N|processes per RIL table: N > 1 runs torchrun --nproc_per_node N -m ril precompute" \
                  "(as python -m torch.distributed.run)" ;;
    --device) echo "DEVICE|cpu or cuda|cpu: train.py with USE_CUDA False and ril precompute --device cpu;" \
                   "cuda: the GPU (choose it with CUDA_VISIBLE_DEVICES) (default: cuda when available)" ;;
    --dry-run) echo "DRY_RUN||print the command of every unfinished step (lines starting with '+ ')" \
                    "instead of running it" ;;
    --verbose) echo "VERBOSE||also stream each step's output to the terminal (it always goes to $CONSOLE in" \
                    "the step's folder)" ;;
    *) return 1 ;;
  esac
}

print_flags() {
  local flag var metavar text default
  for flag in $SCRIPT_FLAGS; do
    IFS='|' read -r var metavar text <<< "$(flag_spec "$flag")"
    default="DEFAULT_$var"
    if [ -n "$metavar" ]; then echo "  $flag $metavar  (env $var)"; else echo "  $flag  (env $var=1)"; fi
    echo "$text${!default:+ (default: ${!default})}" | fold -s -w 92 | sed -e 's/ *$//' -e 's/^/      /'
  done
  echo "  -- KEY VALUE ...    config overrides appended to every train.py and ril precompute command"
  echo "  -h, --help          show this help"
  echo
  echo "A flag wins over its environment variable. PYTHON (default python3) is the interpreter used."
  if accepts_flag --trainer; then print_default_cfgs; fi
}

accepts_flag() {
  local known
  for known in $SCRIPT_FLAGS; do [ "$known" != "$1" ] || return 0; done
  return 1
}

# parse_flags "$@": set the variable of every flag in SCRIPT_FLAGS; EXTRA_OPTS gets what follows --.
parse_flags() {
  local flag var metavar
  EXTRA_OPTS=()
  while [ $# -gt 0 ]; do
    flag="$1"
    case "$flag" in
      -h|--help) usage; exit 0 ;;
      --) shift; EXTRA_OPTS=("$@"); return 0 ;;
    esac
    accepts_flag "$flag" || usage_error "unknown option '$flag'"
    IFS='|' read -r var metavar _ <<< "$(flag_spec "$flag")"
    if [ -z "$metavar" ]; then
      printf -v "$var" 1
      shift
    else
      [ $# -ge 2 ] || usage_error "$flag needs a value ($metavar)"
      printf -v "$var" '%s' "$2"
      shift 2
    fi
  done
  [ $(( ${#EXTRA_OPTS[@]} % 2 )) -eq 0 ] || usage_error "the config overrides after -- must be KEY VALUE pairs"
}

# Every flag variable still empty gets DEFAULT_<VAR> (or ""); then values are checked.
apply_defaults() {
  local flag var default
  for flag in $SCRIPT_FLAGS; do
    IFS='|' read -r var _ _ <<< "$(flag_spec "$flag")"
    default="DEFAULT_$var"
    [ -n "${!var:-}" ] || printf -v "$var" '%s' "${!default:-}"
  done
  check_numbers SEEDS "${SEEDS:-}"
  check_numbers SHOTS "${SHOTS:-}"
  local name
  for name in REGIONS TOPK RIL_WORKERS NPROC LOAD_EPOCH; do
    if [ -n "${!name:-}" ]; then check_numbers "$name" "${!name}"; fi
  done
  case "${DEVICE:-}" in
    ""|cpu|cuda) ;;
    *) usage_error "--device/DEVICE is '$DEVICE'; expected cpu or cuda (or unset)" ;;
  esac
  case "${SUBSAMPLE:-base}" in
    base|all|new) ;;
    *) usage_error "--subsample/SUBSAMPLE is '$SUBSAMPLE'; expected base, all or new" ;;
  esac
  RIL_DIR="${RIL_DIR:-${OUT:-}/ril}"
}

check_numbers() {
  local name="$1" word
  for word in $2; do
    [[ "$word" =~ ^-?[0-9]+$ ]] || usage_error "$name holds '$word', which is not an integer (lists are space-separated)"
  done
}

require_data() {
  [ -n "${DATA:-}" ] || usage_error "no dataset root: pass --data DIR or set DATA=/path/to/datasets"
  [ -d "$DATA" ] || die "dataset root '$DATA' (--data/DATA) is not a directory"
}

# read_flags "$@": flags and environment, defaults filled in and checked, a dataset root required.
read_flags() {
  parse_flags "$@"
  apply_defaults
  require_data
}

require_one_value() {
  local name="$1" words
  read -ra words <<< "$2"
  [ "${#words[@]}" -eq 1 ] || usage_error "$name takes one value here, got '$2'"
}

is_fdbpl_family() { [[ "$1" == FDBPL || "$1" == *_FDBPL ]]; }
needs_training() { [ "$1" != ZeroshotCLIP ]; }

# staged_script TRAINER: the script that runs TRAINER after the stage it builds on (a teacher or
# boosting prompts), if TRAINER has one.
staged_script() {
  case "$1" in
    PromptKD) echo promptkd.sh ;;
    CasPL_Boost|*_CasPL) echo caspl.sh ;;
  esac
}

# trains_here TRAINER: true when this script can run TRAINER (precompute_ril.sh only reads its config).
trains_here() {
  local script
  script="$(staged_script "$1")"
  [ -z "$script" ] || [ "$script" = "$PROG" ] || [ "$PROG" = precompute_ril.sh ]
}

# cfg_table_entry TRAINER: its DEFAULT_CFGS entry in the column of CFG_PROTOCOL ("" when not listed).
cfg_table_entry() {
  local column
  case "$CFG_PROTOCOL" in base2new) column=2 ;; few_shot) column=3 ;; cross) column=4 ;; esac
  awk -v trainer="$1" -v column="$column" '$1 == trainer { print $column }' <<< "$DEFAULT_CFGS"
}

# default_cfg TRAINER: its DEFAULT_CFGS entry for CFG_PROTOCOL (the demo: tiny configs).
default_cfg() {
  local cfg
  if [ "${DEMO:-0}" = 1 ]; then
    if needs_training "$1"; then echo "${DEMO_CFG:-tiny_ep10}"; else echo tiny; fi
    return 0
  fi
  cfg="$(cfg_table_entry "$1")"
  if [ -z "$cfg" ] || [ "$cfg" = - ]; then
    usage_error "trainer '$1' has no default config for $CFG_PROTOCOL (DEFAULT_CFGS in scripts/lib/common.sh);" \
      "pass --cfg"
  fi
  echo "$cfg"
}

# print_default_cfgs: the DEFAULT_CFGS column of this script, for the trainers its --trainer takes.
print_default_cfgs() {
  local trainer cfg
  echo
  echo "Default configs (--cfg), in configs/trainers/<TRAINER>/:"
  while read -r trainer _; do
    [ -n "$trainer" ] && trains_here "$trainer" || continue
    if [ "$PROG" = caspl.sh ] && [[ "$trainer" != *_CasPL ]]; then continue; fi
    cfg="$(cfg_table_entry "$trainer")"
    if [ "$cfg" != - ]; then printf '  %-16s %s\n' "$trainer" "$cfg"; fi
  done <<< "$DEFAULT_CFGS"
}

stem() { local name="${1##*/}"; echo "${name%.yaml}"; }

# config_file KIND DIR NAME: a .yaml path as given, else DIR/NAME.yaml; names the choices when absent.
config_file() {
  local kind="$1" dir="$2" name="$3" choices
  if [[ "$name" == *.yaml ]]; then
    [ -f "$name" ] || die "$kind config '$name' does not exist"
    echo "$name"
    return 0
  fi
  [ -f "$dir/$name.yaml" ] && { echo "$dir/$name.yaml"; return 0; }
  if [ ! -d "$dir" ]; then
    choices="$(ls "$(dirname "$dir")" | paste -sd' ')"
    die "no config folder ${dir#"$REPO_ROOT"/} for $kind; give a .yaml path, or choose among: $choices"
  fi
  choices="$(cd "$dir" && ls -- *.yaml 2>/dev/null | sed 's/\.yaml$//' | paste -sd' ')"
  die "$kind config '$name' not found in ${dir#"$REPO_ROOT"/}/; choose one of: ${choices:-(none)} or give a .yaml path"
}

dataset_config() { config_file dataset "$REPO_ROOT/configs/datasets" "$1"; }

# check_datasets NAME...: fail before any run when a dataset config is missing.
check_datasets() {
  local dataset
  for dataset in "$@"; do dataset_config "$dataset" > /dev/null; done
}

# resolve_methods: TRAINERS[i], CFG_FILES[i], CFG_NAMES[i] and CFG_BACKBONES[i] from TRAINER, CFG and BACKBONE.
resolve_methods() {
  local cfgs i cfg script
  read -ra TRAINERS <<< "$TRAINER"
  read -ra cfgs <<< "${CFG:-}"
  [ "${#TRAINERS[@]}" -gt 0 ] || usage_error "--trainer/TRAINER is empty"
  if [ "${#cfgs[@]}" -gt 1 ] && [ "${#cfgs[@]}" -ne "${#TRAINERS[@]}" ]; then
    usage_error "--cfg has ${#cfgs[@]} configs for ${#TRAINERS[@]} trainers; give one for all or one per trainer"
  fi
  CFG_FILES=() CFG_NAMES=() CFG_BACKBONES=() MAX_EPOCHS=() INPUT_TAGS=()
  for i in "${!TRAINERS[@]}"; do
    script="$(staged_script "${TRAINERS[i]}")"
    trains_here "${TRAINERS[i]}" || usage_error "--trainer ${TRAINERS[i]} trains on a stage it builds on" \
      "(a teacher or boosting prompts), which $PROG does not run: use scripts/$script"
    if [ "${#cfgs[@]}" -gt 1 ]; then cfg="${cfgs[i]}"
    elif [ "${#cfgs[@]}" -eq 1 ]; then cfg="${cfgs[0]}"
    else cfg="$(default_cfg "${TRAINERS[i]}")" || exit 2
    fi
    method_config "$i" "$cfg"
  done
}

# method_config I CFG: CFG_FILES[I], CFG_NAMES[I] and CFG_BACKBONES[I] (train.py --backbone, or "")
# of TRAINERS[I] with config CFG on the student BACKBONE (see --backbone).
method_config() {
  local i="$1" cfg="$2" dir="$REPO_ROOT/configs/trainers/${TRAINERS[$1]}" twin file
  local student name="${2##*/}"
  student="$(backbone_slug "${BACKBONE:-}")"
  CFG_BACKBONES[i]=""
  if [ -n "$student" ] && [[ "$name" =~ vit_b(16|32) ]]; then
    name="${name//vit_b16/$student}"
    twin="${cfg%"${cfg##*/}"}${name//vit_b32/$student}"
    if [[ "$twin" == *.yaml ]]; then file="$twin"; else file="$dir/$twin.yaml"; fi
    [ -f "$file" ] || die "--backbone $BACKBONE puts every trainer on $BACKBONE, but ${TRAINERS[i]}'s config" \
      "'$cfg' has no $BACKBONE twin: ${file#"$REPO_ROOT"/} does not exist. Add it (the same config with" \
      "MODEL.BACKBONE.NAME \"$BACKBONE\"), pass another --cfg, or leave out --backbone"
    not_twin "$i" "$cfg" "$twin" "$file"
    cfg="$twin"
  elif [ -n "${BACKBONE:-}" ]; then
    CFG_BACKBONES[i]="$BACKBONE"
  fi
  CFG_FILES[i]="$(config_file "${TRAINERS[i]}" "$dir" "$cfg")"
  CFG_NAMES[i]="$(stem "$cfg")${CFG_BACKBONES[i]:+_$(checkpoint_tag "$BACKBONE")}"
}

# not_twin I CFG TWIN TWIN_FILE: stop when CFG and its twin by name differ in more than the backbone, which
# the first line of the vit_b32 one says ("# Not the ViT-B/32 twin of ...": a reference defines that name).
not_twin() {
  local cfg="$2" twin="$3" file="$4" own note
  [ "$twin" != "$cfg" ] || return 0
  if [[ "$cfg" == *.yaml ]]; then own="$cfg"; else own="$REPO_ROOT/configs/trainers/${TRAINERS[$1]}/$cfg.yaml"; fi
  note="$(head -n 1 "$file" "$own" 2>/dev/null | grep -m 1 '^# Not the ViT-B/32 twin' || true)"
  [ -z "$note" ] || die "--backbone $BACKBONE would replace ${TRAINERS[$1]}'s config '$cfg' by '$twin', but one" \
    "of them says: ${note#\# } Name the config you mean without --backbone, or keep '$cfg' and give the" \
    "backbone as -- MODEL.BACKBONE.NAME $BACKBONE"
}

# backbone_slug NAME: vit_b16 or vit_b32, the config-name form of ViT-B/16 and ViT-B/32; else nothing.
backbone_slug() {
  case "$1" in
    ViT-B/16) echo vit_b16 ;;
    ViT-B/32) echo vit_b32 ;;
  esac
}

# read_config_values: MAX_EPOCHS[i] and INPUT_TAGS[i] ("224px_bicubic") of
# every method config, in one Python call made the first time a step needs them.
read_config_values() {
  [ -z "${INPUT_TAGS[*]:-}" ] || return 0
  local i=0 values epoch height width interpolation
  values="$(PYTHONWARNINGS=ignore "$PYTHON" "$REPO_ROOT/scripts/lib/config_values.py" "${CFG_FILES[@]}" \
    -- ${EXTRA_OPTS[@]+"${EXTRA_OPTS[@]}"})" || die "could not read the method configs ${CFG_FILES[*]}"
  while read -r epoch height width interpolation; do
    MAX_EPOCHS[i]="$epoch"
    if [ "$height" = "$width" ]; then INPUT_TAGS[i]="${height}px_$interpolation"
    else INPUT_TAGS[i]="${height}x${width}px_$interpolation"
    fi
    i=$((i + 1))
  done <<< "$values"
}

# plan_methods_on_datasets PROTOCOL: the --trainer/--cfg methods over DATASETS, checked and announced.
plan_methods_on_datasets() {
  resolve_methods
  # shellcheck disable=SC2086  # DATASETS is a list
  check_datasets $DATASETS
  print_plan "$1" "datasets $DATASETS"
}

print_plan() {
  local i methods=()
  for i in "${!TRAINERS[@]}"; do methods+=("${TRAINERS[i]}/${CFG_NAMES[i]}"); done
  echo "== $1: ${methods[*]} | $2 | seeds $SEEDS | shots $SHOTS | output $OUT"
  if [ "${DRY_RUN:-}" = 1 ]; then echo "== dry run: nothing runs; commands need PYTHONPATH=$REPO_ROOT"; fi
}

quote_cmd() { local quoted; quoted="$(printf '%q ' "$@")"; echo "${quoted% }"; }

# pending DIR LABEL: true when DIR has no completion marker; otherwise says it is skipped.
pending() {
  [ -f "$1/$MARKER" ] || return 0
  echo "[skip] $2: finished ($1)"
  return 1
}

# check_settings DIR ROOT LABEL CMD...: stop when DIR (under the output root ROOT) records other
# settings than CMD's (scripts/lib/run_settings.py), so no folder ever mixes two sweeps.
check_settings() {
  local dir="$1" root="$2" label="$3" differences
  shift 3
  [ -d "$dir" ] || return 0
  differences="$("$PYTHON" "$REPO_ROOT/scripts/lib/run_settings.py" "$dir" "$root" "$REPO_ROOT" -- "$@")" ||
    die "$label: $differences"
}

# step_pending DIR ROOT LABEL CMD...: check_settings, then pending.
step_pending() {
  check_settings "$@"
  pending "$1" "$3"
}

# log_names DIR: the Dassl log files in DIR (log.txt, and log.txt-<timestamp> of later attempts).
log_names() { (shopt -s nullglob; cd "$1" && for name in log.txt*; do echo "$name"; done); }

# new_log DIR NAMES: the newest log file in DIR that is not among NAMES (the ones before an attempt).
new_log() {
  local name newest=""
  while read -r name; do
    if [ -z "$name" ] || grep -qxF -- "$name" <<< "$2"; then continue; fi
    if [ -z "$newest" ] || [ "$1/$name" -nt "$1/$newest" ]; then newest="$name"; fi
  done <<< "$(log_names "$1")"
  echo "$newest"
}

# run_step DIR LABEL CMD...: record CMD in DIR/settings.txt and run it with its output in
# DIR/console.txt; on exit 0 mark DIR finished, naming the log file this attempt wrote.
run_step() {
  local dir="$1" label="$2" start=$SECONDS status=0 logs log marker
  shift 2
  if [ "${DRY_RUN:-}" = 1 ]; then
    echo "[dry-run] $label"
    echo "+ $(quote_cmd "$@")"
    return 0
  fi
  mkdir -p "$dir"
  echo "[run] $label ($dir)"
  quote_cmd "$@" > "$dir/$SETTINGS"
  logs="$(log_names "$dir")"
  printf '### %s: %s\n' "$(date '+%F %T')" "$(quote_cmd "$@")" >> "$dir/$CONSOLE"
  if [ "${VERBOSE:-}" = 1 ]; then
    "$@" 2>&1 | tee -a "$dir/$CONSOLE" || status=$?
  else
    "$@" >> "$dir/$CONSOLE" 2>&1 || status=$?
  fi
  if [ "$status" -ne 0 ]; then
    [ "${VERBOSE:-}" = 1 ] || tail -n 25 "$dir/$CONSOLE" >&2
    die "$label failed (exit $status); its output is in $dir/$CONSOLE." \
        "Run the same command again to retry: finished steps are skipped"
  fi
  log="$(new_log "$dir" "$logs")"
  marker="$(date '+%F %T')"$'\n'"$(quote_cmd "$@")"$'\n'
  if [ -n "$log" ]; then marker+="log $log"$'\n'; fi  # the log parse_results.py reads
  printf '%s' "$marker" > "$dir/$MARKER"
  echo "      finished in $((SECONDS - start)) s"
}

# checkpoint_tag MODEL: a CLIP (teacher or student) in a folder name; a checkpoint file by its name and a
# checksum of its absolute path, so two teacher.pt files in different folders get different folders.
checkpoint_tag() {
  if [ -f "$1" ] || [[ "$1" =~ \.(pt|pth|bin|ckpt|safetensors)$ ]]; then
    local name="${1##*/}" dir path
    dir="$(dirname "$1")"
    if [ -d "$dir" ]; then path="$(cd "$dir" && pwd)/$name"
    elif [[ "$1" == /* ]]; then path="$1"
    else path="$PWD/$1"
    fi
    echo "${name%.*}-$(printf '%s' "$path" | cksum | cut -d' ' -f1)"
  else
    printf '%s\n' "$1" | tr -c 'A-Za-z0-9._\n-' '-'
  fi
}

# set_table I DATASET SEED SHOTS SUBSAMPLE: TABLE_DIR and TABLE, the RIL table of that training
# split for method I.
set_table() {
  local i="$1" dataset="$2" seed="$3" shots="$4" subsample="$5" seed_dir="seed$3"
  read_config_values
  if [ "$shots" -le 0 ]; then seed_dir="seed_all"; fi  # every seed trains on the same images
  TABLE_DIR="$RIL_DIR/$(stem "$dataset")/shots_$shots/$subsample/$(checkpoint_tag "$TEACHER")_${INPUT_TAGS[i]}"
  TABLE_DIR+="_m${REGIONS}_k${TOPK}/$seed_dir"
  TABLE="$TABLE_DIR/table.h5"
}

# ensure_table I DATASET SEED SHOTS SUBSAMPLE: TABLE (see set_table), built (or resumed) first when it
# is not finished.
ensure_table() {
  local i="$1" dataset="$2" seed="$3" shots="$4" subsample="$5" dir cmd=("$PYTHON")
  set_table "$@"
  dir="$TABLE_DIR"
  [[ "$TABLES_SEEN" != *"|$dir|"* ]] || return 0  # one table serving several seeds is handled once
  TABLES_SEEN+="|$dir|"
  local label="RIL table $(stem "$dataset") $subsample ${shots}-shot ${dir##*/}, teacher $TEACHER"
  if [ "${NPROC:-1}" -gt 1 ]; then cmd+=(-m torch.distributed.run --nproc_per_node "$NPROC"); fi
  cmd+=(-m ril precompute --root "$DATA" --seed "$seed" --dataset-config-file "$(dataset_config "$dataset")"
        --config-file "${CFG_FILES[i]}" --teacher "$TEACHER" --regions "$REGIONS" --topk "$TOPK"
        --out "$TABLE")
  if [ -n "${RIL_WORKERS:-}" ]; then cmd+=(--workers "$RIL_WORKERS"); fi
  if [ -n "${DEVICE:-}" ]; then cmd+=(--device "$DEVICE"); fi
  cmd+=(DATASET.NUM_SHOTS "$shots" DATASET.SUBSAMPLE_CLASSES "$subsample" ${EXTRA_OPTS[@]+"${EXTRA_OPTS[@]}"})
  check_settings "$dir" "$RIL_DIR" "$label" "${cmd[@]}"
  if [ ! -f "$dir/$MARKER" ] && [ -f "$TABLE" ] && [ "${DRY_RUN:-}" != 1 ] &&
     "$PYTHON" -m ril verify --table "$TABLE" > /dev/null 2>&1; then
    quote_cmd "${cmd[@]}" > "$dir/$SETTINGS"
    printf '%s\nverified an existing complete table\n' "$(date '+%F %T')" > "$dir/$MARKER"
  fi
  pending "$dir" "$label" || return 0
  run_step "$dir" "$label" "${cmd[@]}"
}

# train_cmd I DATASET SEED DIR [train.py flags...]: CMD = train.py for method I into DIR; the
# caller appends config overrides, then end_cmd.
train_cmd() {
  local i="$1" dataset="$2" seed="$3" dir="$4"
  shift 4
  CMD=("$PYTHON" "$REPO_ROOT/train.py" --root "$DATA" --seed "$seed" --trainer "${TRAINERS[i]}"
       --dataset-config-file "$(dataset_config "$dataset")" --config-file "${CFG_FILES[i]}" --output-dir "$dir")
  if [ -n "${CFG_BACKBONES[i]}" ]; then CMD+=(--backbone "${CFG_BACKBONES[i]}"); fi
  CMD+=("$@")
}

# end_cmd: the device and the user's trailing overrides come last, so they win.
end_cmd() {
  if [ "${DEVICE:-}" = cpu ]; then CMD+=(USE_CUDA False); fi
  CMD+=(${EXTRA_OPTS[@]+"${EXTRA_OPTS[@]}"})
}

# train_step I DATASET SEED DIR SHOTS SUBSAMPLE LABEL: train method I (FDBPL family: from its RIL table).
train_step() {
  local i="$1" dataset="$2" seed="$3" dir="$4" shots="$5" subsample="$6" label="$7" table_opts=()
  if is_fdbpl_family "${TRAINERS[i]}"; then
    set_table "$i" "$dataset" "$seed" "$shots" "$subsample"
    table_opts=(TRAINER.FDBPL.RIL_TABLE "$TABLE")
  fi
  train_cmd "$i" "$dataset" "$seed" "$dir"
  CMD+=(DATASET.NUM_SHOTS "$shots" DATASET.SUBSAMPLE_CLASSES "$subsample" ${table_opts[@]+"${table_opts[@]}"})
  end_cmd
  step_pending "$dir" "$OUT" "$label" "${CMD[@]}" || return 0
  if is_fdbpl_family "${TRAINERS[i]}"; then ensure_table "$i" "$dataset" "$seed" "$shots" "$subsample"; fi
  run_step "$dir" "$label" "${CMD[@]}"
}

# eval_step I DATASET SEED DIR MODEL_DIR LABEL [KEY VALUE...]: eval-only into DIR; MODEL_DIR is
# loaded at MAX_EPOCHS[I] unless the method has nothing to train.
eval_step() {
  local i="$1" dataset="$2" seed="$3" dir="$4" model_dir="$5" label="$6" flags=(--eval-only)
  shift 6
  if needs_training "${TRAINERS[i]}"; then
    if [ -z "${LOAD_EPOCH:-}" ]; then read_config_values; fi
    flags+=(--model-dir "$model_dir" --load-epoch "${LOAD_EPOCH:-${MAX_EPOCHS[i]}}")
  fi
  train_cmd "$i" "$dataset" "$seed" "$dir" "${flags[@]}"
  CMD+=("$@")
  end_cmd
  step_pending "$dir" "$OUT" "$label" "${CMD[@]}" || return 0
  run_step "$dir" "$label" "${CMD[@]}"
}

# base2new_dir SPLIT I DATASET SEED [SHOTS]: the base-to-new run folder of method I (TRAINERS, CFG_NAMES).
base2new_dir() { echo "$OUT/base2new/$1/$(stem "$3")/shots_${5:-$SHOTS}/${TRAINERS[$2]}/${CFG_NAMES[$2]}/seed$4"; }

# evaluate_base_new I DATASET SEED MODEL_DIR LABEL: eval-only of method I on the base and on the new classes.
evaluate_base_new() {
  local split
  for split in base new; do
    eval_step "$1" "$2" "$3" "$(base2new_dir "test_$split" "$1" "$2" "$3")" "$4" "test_$split $5" \
      DATASET.NUM_SHOTS "$SHOTS" DATASET.SUBSAMPLE_CLASSES "$split"
  done
}

# print_results PROTOCOL DATASET...: the results table of this sweep's methods, seeds and shots; a
# cell without every seed fails the script, so a sweep never ends on a silently partial table.
print_results() {
  local protocol="$1" i cfgs=() stems=() dataset
  shift
  if [ "${DRY_RUN:-}" = 1 ]; then return 0; fi
  for i in "${!TRAINERS[@]}"; do cfgs+=("${CFG_NAMES[i]}"); done
  for dataset in "$@"; do stems+=("$(stem "$dataset")"); done
  echo
  # shellcheck disable=SC2086  # SEEDS and SHOTS are lists
  "$PYTHON" "$REPO_ROOT/scripts/parse_results.py" "$OUT" --protocol "$protocol" --trainers "${TRAINERS[@]}" \
    --cfg "${cfgs[@]}" --datasets "${stems[@]}" --seeds $SEEDS --shots $SHOTS --require-complete \
    ${SOURCE_DATASET:+--source-dataset "$(stem "$SOURCE_DATASET")"} \
    || die "the results table above has incomplete cells, although every step of this sweep finished;" \
           "see its notes (a run whose log holds no final accuracy is not counted)"
}

# transfer_sweep: train on SOURCE_DATASET (all classes, SHOTS shots), evaluate eval-only on every
# TARGET_DATASETS. cross_dataset.sh and domain_generalization.sh share the source run folder, so
# either reuses the other's model. ZeroshotCLIP trains nothing and is evaluated on the source too.
transfer_sweep() {
  local i seed target targets model_dir method group source_name
  source_name="$(stem "$SOURCE_DATASET")"
  for i in "${!TRAINERS[@]}"; do
    method="${TRAINERS[i]}/${CFG_NAMES[i]}"
    group="${TRAINERS[i]}/${CFG_NAMES[i]}_${SHOTS}shots"
    for seed in $SEEDS; do
      model_dir="$OUT/$source_name/$group/seed$seed"
      targets="$TARGET_DATASETS"
      if needs_training "${TRAINERS[i]}"; then
        train_step "$i" "$SOURCE_DATASET" "$seed" "$model_dir" "$SHOTS" all \
          "train $source_name $method ${SHOTS}-shot seed $seed"
      elif [[ " $targets " != *" $SOURCE_DATASET "* ]]; then
        targets="$SOURCE_DATASET $targets"
      fi
      for target in $targets; do
        eval_step "$i" "$target" "$seed" "$OUT/evaluation/$group/$(stem "$target")/seed$seed" "$model_dir" \
          "evaluate $(stem "$target") with $source_name $method ${SHOTS}-shot seed $seed"
      done
    done
  done
}

# transfer_main PROTOCOL "$@": the whole of cross_dataset.sh and domain_generalization.sh.
transfer_main() {
  local protocol="$1"
  shift
  CFG_PROTOCOL=cross
  DATA_NOTE="required"
  SHOTS_NOTE="one value"
  read_flags "$@"
  require_one_value --shots "$SHOTS"
  require_one_value --source-dataset "$SOURCE_DATASET"
  resolve_methods
  # shellcheck disable=SC2086  # TARGET_DATASETS is a list
  check_datasets "$SOURCE_DATASET" $TARGET_DATASETS
  print_plan "$protocol" "$SOURCE_DATASET -> $TARGET_DATASETS"
  transfer_sweep
  # shellcheck disable=SC2086
  print_results "$protocol" $TARGET_DATASETS
}
