#!/usr/bin/env bash
# Rehearsal at real shape: every protocol script with its default settings, on miniature dataset
# trees that have the benchmarks' real layouts and class counts, with tiny CLIPs on the CPU.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PROG="$(basename "$0")"
PYTHON="${PYTHON:-python3}"
ALL_PROTOCOLS="base2new side_by_side promptkd caspl cross_dataset domain_generalization few_shot"
BASE2NEW_TRAINERS="ZeroshotCLIP CoOp CoCoOp MaPLe PromptSRC IVLP VPT FDBPL CoOp_FDBPL CoCoOp_FDBPL MaPLe_FDBPL PromptSRC_FDBPL VPT_FDBPL"
ELEVEN_DATASETS="imagenet caltech101 oxford_pets stanford_cars oxford_flowers food101 fgvc_aircraft sun397 dtd eurosat ucf101"
IMAGENET_VARIANTS="imagenetv2 imagenet_sketch imagenet_a imagenet_r"

OUT=output/rehearsal
DATASETS="$ELEVEN_DATASETS"
TRAINERS="$BASE2NEW_TRAINERS"
PROTOCOLS="$ALL_PROTOCOLS"
SEEDS=1
EPOCHS=1
REGIONS=4

usage() {
  cat <<EOF
Usage: bash scripts/rehearse.sh [FLAGS]

Runs the protocol scripts the way a researcher does, with their defaults (configs, 16 shots, K = 20,
teacher texts, run folders, results tables), on miniature \$DATA trees in the benchmarks'
real folder layouts with their real class counts (ImageNet 1000, SUN397 397, ..., EuroSAT 10, and
the ImageNet variants; scripts/make_rehearsal_data.py, one tiny image per class and split). Only
what cannot run on this machine is changed: the CLIPs are tiny random checkpoints in the real
input shape (224 px, 12 layers, so every published prompt depth fits; scripts/make_tiny_clip.py),
training lasts --epochs, RIL tables hold --regions regions per image, one seed runs (--seeds; the
scripts' default of three repeats every command with another few-shot draw and RIL table, for three
times the hours), and everything runs on the CPU. It proves that every default command runs to a
complete table at real class counts; the numbers themselves are those of random models. It exits
non-zero when any step fails or any table has a missing cell. Rerunning skips finished steps (the
scripts' finished.txt markers).

Protocols (--protocols):
  base2new               base2new.sh --trainer "--trainers" on --datasets
  side_by_side           the README's example: base2new.sh --trainer "ZeroshotCLIP CoOp PromptSRC
                         FDBPL" --backbone ViT-B/16 (the tiny student's weights stand in for
                         ViT-B/16's through MODEL.BACKBONE.NAME), into its own output folder
  promptkd               promptkd.sh (teacher stage and distilled student)
  caspl                  caspl.sh (boosting stage, then CoOp/MaPLe/PromptSRC cascaded)
  cross_dataset          cross_dataset.sh --trainer "--trainers" (ImageNet to the other datasets)
  domain_generalization  domain_generalization.sh --trainer "--trainers" (ImageNet to its variants)
  few_shot               few_shot.sh with its default trainer (FDBPL) and shots (1 2 4 8 16)

Flags:
  --out DIR             rehearsal folder: data/, tiny_clip/, runs/, summary.md (default: $OUT)
  --datasets "NAME ..." datasets of base2new, side_by_side, promptkd, caspl and few_shot, and the
                        targets of cross_dataset (default: the 11 base-to-new datasets)
  --trainers "NAME ..." trainers of base2new, cross_dataset and domain_generalization
                        (default: every trainer these scripts take: $BASE2NEW_TRAINERS)
  --protocols "NAME ..." which protocols to run (default: all: $ALL_PROTOCOLS)
  --seeds "S ..."       seeds (default: $SEEDS; "1 2 3" is the scripts' own default)
  --epochs N            OPTIM.MAX_EPOCH of every training run (default: $EPOCHS)
  --regions M           regions per image of every RIL table (default: $REGIONS)
  -h, --help            show this help

PYTHON (default python3) is the interpreter used.
EOF
}

die() { echo "$PROG: $*" >&2; exit 1; }
usage_error() { echo "$PROG: $* (see $PROG --help)" >&2; exit 2; }

while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --out|--datasets|--trainers|--protocols|--seeds|--epochs|--regions)
      [ $# -ge 2 ] || usage_error "$1 needs a value"
      var="${1#--}"
      printf -v "${var^^}" '%s' "$2"
      shift 2 ;;
    *) usage_error "unknown option '$1'" ;;
  esac
done
for protocol in $PROTOCOLS; do
  [[ " $ALL_PROTOCOLS " == *" $protocol "* ]] || usage_error "unknown protocol '$protocol'; choose among: $ALL_PROTOCOLS"
done
[[ "$EPOCHS" =~ ^[1-9][0-9]*$ ]] || usage_error "--epochs is '$EPOCHS'; expected a positive integer"
[[ "$REGIONS" =~ ^[1-9][0-9]*$ ]] || usage_error "--regions is '$REGIONS'; expected a positive integer"

mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
DATA="$OUT/data"
RUNS="$OUT/runs"
STUDENT="$OUT/tiny_clip/student.pt"
TEACHER="$OUT/tiny_clip/teacher.pt"
SUMMARY="$OUT/summary.md"
export PYTHONWARNINGS=ignore

# tiny_clip PATH FLAGS...: a random tiny CLIP in the real input shape, unless PATH exists.
tiny_clip() {
  local path="$1"
  shift
  [ -f "$path" ] && return 0
  mkdir -p "$(dirname "$path")"
  "$PYTHON" "$REPO_ROOT/scripts/make_tiny_clip.py" --out "$path.tmp" --image-size 224 --patch 32 --layers 12 "$@" > /dev/null
  mv "$path.tmp" "$path"
}

datasets_needed() {
  local needed="$DATASETS"
  if [[ " $PROTOCOLS " == *" cross_dataset "* || " $PROTOCOLS " == *" domain_generalization "* ]]; then
    needed="imagenet $needed"
  fi
  if [[ " $PROTOCOLS " == *" domain_generalization "* ]]; then needed="$needed $IMAGENET_VARIANTS"; fi
  echo "$needed" | tr ' ' '\n' | awk 'NF && !seen[$0]++' | paste -sd' '
}

# protocol NAME SCRIPT FLAGS...: run SCRIPT with the shared rehearsal settings; time it for the summary.
protocol() {
  local name="$1" script="$2" start=$SECONDS
  shift 2
  echo
  echo "=== $name: bash scripts/$script $*"
  DATA="$DATA" bash "$REPO_ROOT/scripts/$script" --device cpu --seeds "$SEEDS" "$@" \
    || die "protocol $name failed (bash scripts/$script); see the messages above"
  printf '| %s | `bash scripts/%s %s` | %d |\n' "$name" "$script" "$*" $((SECONDS - start)) >> "$SUMMARY.rows"
}

echo "== Rehearsal in $OUT: protocols $PROTOCOLS; datasets $DATASETS; trainers $TRAINERS"
tiny_clip "$STUDENT" --width 64 --seed 1
tiny_clip "$TEACHER" --width 128 --seed 2
# shellcheck disable=SC2046  # a list of dataset names
"$PYTHON" "$REPO_ROOT/scripts/make_rehearsal_data.py" --out "$DATA" --datasets $(datasets_needed)
: > "$SUMMARY.rows"
epochs=(OPTIM.MAX_EPOCH "$EPOCHS")
targets=()  # cross_dataset's own default targets are the ten datasets besides ImageNet
if [ "$DATASETS" != "$ELEVEN_DATASETS" ]; then
  targets=(--target-datasets "$(echo "$DATASETS" | tr ' ' '\n' | awk '$0 != "imagenet"' | paste -sd' ')")
fi
ril=(--teacher "$TEACHER" --regions "$REGIONS")

for name in $PROTOCOLS; do
  case "$name" in
    base2new)
      protocol "$name" base2new.sh --out "$RUNS" --trainer "$TRAINERS" --datasets "$DATASETS" \
        --backbone "$STUDENT" "${ril[@]}" -- "${epochs[@]}" ;;
    side_by_side)
      protocol "$name" base2new.sh --out "$OUT/runs_side_by_side" --trainer "ZeroshotCLIP CoOp PromptSRC FDBPL" \
        --datasets "$DATASETS" --backbone ViT-B/16 "${ril[@]}" -- MODEL.BACKBONE.NAME "$STUDENT" "${epochs[@]}" ;;
    promptkd)
      protocol "$name" promptkd.sh --out "$RUNS" --datasets "$DATASETS" --backbone "$STUDENT" --teacher "$TEACHER" \
        -- "${epochs[@]}" ;;
    caspl)
      protocol "$name" caspl.sh --out "$RUNS" --datasets "$DATASETS" --backbone "$STUDENT" "${ril[@]}" \
        -- "${epochs[@]}" ;;
    cross_dataset)
      protocol "$name" cross_dataset.sh --out "$RUNS" --trainer "$TRAINERS" ${targets[@]+"${targets[@]}"} \
        --backbone "$STUDENT" "${ril[@]}" -- "${epochs[@]}" ;;
    domain_generalization)
      protocol "$name" domain_generalization.sh --out "$RUNS" --trainer "$TRAINERS" \
        --backbone "$STUDENT" "${ril[@]}" -- "${epochs[@]}" ;;
    few_shot)
      protocol "$name" few_shot.sh --out "$RUNS" --datasets "$DATASETS" \
        --backbone "$STUDENT" "${ril[@]}" -- "${epochs[@]}" ;;
  esac
done

# results_table ROOT PROTOCOL [parse_results flags]: every trainer found under ROOT, each expected
# seed and dataset required; appended to the summary as Markdown.
results_table() {
  local root="$1" protocol="$2" markdown="$OUT/table_$2_$(basename "$1").md"
  shift 2
  echo
  # shellcheck disable=SC2086  # SEEDS is a list
  "$PYTHON" "$REPO_ROOT/scripts/parse_results.py" "$root" --protocol "$protocol" --seeds $SEEDS \
    --require-complete --markdown "$markdown" "$@" || die "the $protocol table of $root is incomplete (see above)"
  printf '\n%s\n' "$(cat "$markdown")" >> "$SUMMARY.tables"
}

: > "$SUMMARY.tables"
read -ra dataset_list <<< "$DATASETS"
if [[ " $PROTOCOLS " =~ " "(base2new|promptkd|caspl)" " ]]; then
  results_table "$RUNS" base2new --datasets "${dataset_list[@]}"
fi
if [[ " $PROTOCOLS " == *" side_by_side "* ]]; then
  results_table "$OUT/runs_side_by_side" base2new --datasets "${dataset_list[@]}"
fi
for name in cross_dataset domain_generalization few_shot; do
  if [[ " $PROTOCOLS " == *" $name "* ]]; then results_table "$RUNS" "$name"; fi
done

{
  echo "# Rehearsal $(date '+%F %T'): every table complete"
  echo
  echo "| protocol | command (DATA=$DATA, plus --device cpu) | seconds |"
  echo "|---|---|---:|"
  cat "$SUMMARY.rows"
  echo
  echo "Total: $SECONDS s. The tables below come from random tiny CLIPs: they show completeness, not accuracy."
  cat "$SUMMARY.tables"
} > "$SUMMARY"
rm -f "$SUMMARY.rows" "$SUMMARY.tables"
echo
echo "== Rehearsal finished in $SECONDS s: every protocol ran to a complete table ($SUMMARY)"
