#!/usr/bin/env bash
# The reasoning-gap study on the embedded testbed (docs/results.md), every stage resumable.
#
#   bash scripts/study.sh                 # validation scenes: choose settings here
#   SPLIT=test bash scripts/study.sh      # the held-out report, once the settings are fixed
#   RUNS="sdrt lora-sft" bash scripts/study.sh   # only these trainings (default: all but the sweep)
#   RUNS="sdrt sweep-rank-8" bash scripts/study.sh   # sweep runs (configs/sweep/), validation only
#   DISTILLED="scenes scenes-more" WORK=runs/study-6k bash scripts/study.sh   # 6,000 multi-hop traces
#   RETAINED="easy-vqa single-hop single-hop-more" ...   # and 1,500 more single-hop ones
#   OVERLAYS="configs/ablations/ce-only.yaml configs/curve/snapshots.yaml" ...   # added to every
#       training's configs; an adapter kept every N steps (snapshot_every) is scored on SPLIT too;
#       an overlay that sets what a sweep or ablation run itself changes is refused
#   HELD_OUT=scenes-three-hop DISTILLED=scenes-three-hop WORK=runs/study-3hop ...   # three-hop
#       questions: traced on training scenes, scored on held-out ones
#   RUNS=reference-labels SPLIT=test ...   # a diagnostic, never in the default list: the adapter
#       trained on the multi-hop questions' reference answers (how much one pass can hold at all)
#   MODEL=embedded:runs/align-embedded-3/weights WORK=runs/study-align3 ...   # the study on the
#       weights of another alignment run (every stage; its traces need their own WORK folder)
#
# 1. traces: the scene prompts of configs/study/traces-scenes.yaml on 2,000 multi-hop questions
#    of training scenes of seed 1 (alignment drew its scenes from seed 0), 500 easy-vqa and 500
#    single-hop scene training questions; no labels;
# 2. distillation: the SDRT adapter, its ablations (configs/ablations) and the controls:
#    LoRA-SFT on the same pseudo-labels, and the adapter trained on the model's own direct answers.
#    The multi-hop traces are distilled; the easy-vqa and single-hop ones are retained (trained on
#    the model's own direct answers, `--retain`), so that the guards stay as they were;
# 3. evaluation: direct, the ensemble of those prompts and every adapter on the same N_EVAL
#    questions of SPLIT, with paired intervals against direct (SPLIT-results-*.json in each
#    folder); easy-vqa (test split only) joins in the test pass.
# Every stage runs the embedded model in bfloat16 (the configs' dtype, --dtype here), the same
# precision for direct answers, the ensemble and every adapter.
# A killed run picks up where it stopped: traces and distillation resume, finished evaluations
# are kept.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${WORK:-runs/study}
SPLIT=${SPLIT:-validation}
N_EVAL=${N_EVAL:-500}
STEPS=${STEPS:-600}
ALL_RUNS="sdrt ablation-no-skip ablation-uniform-weights ablation-ce-only ablation-hidden-only ablation-gate-on lora-sft self-training"
# Diagnostics, run only when named: they read the references, so they are not SDRT.
DIAGNOSTIC_RUNS="reference-labels"
# The sweep: the study's adapter with one setting changed (configs/sweep/<name>.yaml), named
# sweep-<name>; validation only, since it is what the study's settings are chosen from.
SWEEP_RUNS=$(for f in configs/sweep/*.yaml; do [ -e "$f" ] && printf 'sweep-%s ' "$(basename "$f" .yaml)"; done)
RUNS=${RUNS:-$ALL_RUNS}
# The multi-hop trace sets distilled (configs/study/traces-<name>.yaml): "scenes" (2,000
# questions), or "scenes scenes-more" (6,000). Another set changes every training's data, so it
# needs its own WORK folder (a distillation resumed with other traces is refused).
DISTILLED=${DISTILLED:-scenes}
# The trace sets retained on the model's own direct answers (the guards' questions):
# "easy-vqa single-hop", or with "single-hop-more" (1,500 more single-hop questions of the
# scenes of traces-scenes-more.yaml).
RETAINED=${RETAINED:-easy-vqa single-hop}
# The held-out questions scored with every mode: "scenes" (multi-hop) or "scenes-three-hop" (the
# harder kind; its training traces: DISTILLED=scenes-three-hop, in a WORK folder of its own).
HELD_OUT=${HELD_OUT:-scenes}
case "$HELD_OUT" in
    scenes | scenes-three-hop) ;;
    *) echo "HELD_OUT: unknown benchmark $HELD_OUT; known: scenes scenes-three-hop" >&2; exit 2 ;;
esac
# Config files laid over every training's own (the last word), e.g. cross-entropy only, or
# snapshots for a learning curve.
OVERLAYS=${OVERLAYS:-}
overlays=()
for overlay in $OVERLAYS; do
    [ -f "$overlay" ] || { echo "OVERLAYS: no config file $overlay" >&2; exit 2; }
    overlays+=(--config "$overlay")
done
for source in $DISTILLED; do
    case "$source" in
        scenes*) [ -f "configs/study/traces-$source.yaml" ] && continue ;;
    esac
    echo "DISTILLED: no multi-hop trace config configs/study/traces-$source.yaml" >&2
    exit 2
done
for source in $RETAINED; do
    case "$source" in
        scenes*) ;;
        *) [ -f "configs/study/traces-$source.yaml" ] && continue ;;
    esac
    echo "RETAINED: no guard trace config configs/study/traces-$source.yaml" >&2
    exit 2
done
SDRT=${SDRT:-.venv/bin/sdrt}
PYTHON=${PYTHON:-.venv/bin/python}
# own_config RUN: the config an ablation, diagnostic or sweep run lays over the adapter's (what it
# changes); nothing for the adapter and the controls
own_config() {
    case "$1" in
        ablation-*) echo "configs/ablations/${1#ablation-}.yaml" ;;
        sweep-*) echo "configs/sweep/${1#sweep-}.yaml" ;;
        reference-labels) echo "configs/study/reference-labels.yaml" ;;
    esac
}
for run in $RUNS; do  # a misspelt name would silently train nothing
    case " $ALL_RUNS $DIAGNOSTIC_RUNS $SWEEP_RUNS " in
        *" $run "*) ;;
        *) echo "RUNS: unknown training '$run'; known: $ALL_RUNS $DIAGNOSTIC_RUNS $SWEEP_RUNS" >&2; exit 2 ;;
    esac
    if [ "$SPLIT" = test ] && [ "${run#sweep-}" != "$run" ]; then
        echo "RUNS: $run is a sweep run; sweeps choose settings on validation scenes, not test ones" >&2
        exit 2
    fi
    own=$(own_config "$run")  # an overlay must not undo what the run exists to change
    if [ -n "$own" ] && [ ${#overlays[@]} -gt 0 ]; then
        # shellcheck disable=SC2086  # OVERLAYS is a list of paths
        "$PYTHON" scripts/overlay_conflicts.py "$run" "$own" $OVERLAYS || exit 2
    fi
done
# The model every stage loads: the shipped embedded weights, or embedded:<folder> for others.
MODEL=${MODEL:-embedded}
# The ensemble is evaluated with the prompts the traces were made with (one home: the config).
PROMPTS=$("$PYTHON" -c 'import sys, yaml; print(",".join(yaml.safe_load(open(sys.argv[1]))["prompts"]))' \
    configs/study/traces-scenes.yaml)
K=$(($(tr -cd , <<<"$PROMPTS" | wc -c) + 1))
COMMON=(--model "$MODEL" --limit "$N_EVAL" --prompts "$PROMPTS" --k "$K" --analysis-tokens 128 --batch-size 16 --dtype bfloat16)

# evaluate OUT MODES...: the scene benchmarks on SPLIT (HELD_OUT with every mode,
# single-hop with all but the ensemble); easy-vqa has no validation split, so it is scored (on
# its test split) only in the test pass. Each file is kept once written.
evaluate() {
    local out=$1
    shift
    local plain=() args=("$@") i
    for ((i = 0; i < ${#args[@]}; i++)); do  # the same flags without "--mode ensemble"
        if [ "${args[i]}" = --mode ] && [ "${args[i + 1]:-}" = ensemble ]; then i=$((i + 1)); continue; fi
        plain+=("${args[i]}")
    done
    [ -f "$out-$HELD_OUT.json" ] || $SDRT eval --benchmark "$HELD_OUT" --split "$SPLIT" "${COMMON[@]}" "$@" \
        --out "$out-$HELD_OUT.json"
    [ -f "$out-single-hop.json" ] || $SDRT eval --benchmark scenes-single-hop --split "$SPLIT" \
        "${COMMON[@]}" "${plain[@]}" --out "$out-single-hop.json"
    if [ "$SPLIT" = test ] && [ ! -f "$out-easy-vqa.json" ]; then
        $SDRT eval --benchmark easy-vqa "${COMMON[@]}" "${plain[@]}" --out "$out-easy-vqa.json"
    fi
}

SOURCES="$DISTILLED $RETAINED"
for source in $SOURCES; do
    $SDRT traces --config "configs/study/traces-$source.yaml" --model "$MODEL" --out "$WORK/traces-$source"
done
for source in $SOURCES; do  # pseudo-labels against references: measured, never trained on
    $SDRT label-quality "$WORK/traces-$source" --out "$WORK/label-quality-$source.json"
done
traces=()
for source in $DISTILLED; do traces+=(--traces "$WORK/traces-$source"); done
for source in $RETAINED; do traces+=(--retain "$WORK/traces-$source"); done
cache=(--cache-teacher --teacher-cache "$WORK/teacher-cache")

# The reasoning baseline: direct answers and the ensemble the adapter learns from.
evaluate "$WORK/$SPLIT-base" --mode direct --mode ensemble

train() {  # name, config, extra flags...: skipped unless RUNS names it
    local name=$1 config=$2
    shift 2
    case " $RUNS " in *" $name "*) ;; *) return 0 ;; esac
    $SDRT distill --config "$config" "$@" "${overlays[@]}" "${traces[@]}" --model "$MODEL" --out "$WORK/$name" \
        --steps "$STEPS"
    evaluate "$WORK/$name/$SPLIT-results" --mode direct --mode adapter --adapter "$WORK/$name"
    local snapshot last
    last=$(printf 'step-%07d' "$STEPS")  # the final adapter, scored above
    for snapshot in "$WORK/$name"/snapshots/step-*; do
        [ -d "$snapshot" ] && [ "${snapshot##*/}" != "$last" ] || continue
        evaluate "$snapshot/$SPLIT-results" --mode direct --mode adapter --adapter "$snapshot"
    done
}

train sdrt configs/study/sdrt.yaml "${cache[@]}"
for run in $ALL_RUNS $DIAGNOSTIC_RUNS $SWEEP_RUNS; do  # the adapter with one config laid over it
    own=$(own_config "$run")
    if [ -n "$own" ]; then train "$run" configs/study/sdrt.yaml --config "$own" "${cache[@]}"; fi
done
train lora-sft configs/study/lora-sft.yaml
train self-training configs/study/self-training.yaml
"$PYTHON" scripts/study_table.py "$WORK" "$SPLIT"
