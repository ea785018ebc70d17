#!/usr/bin/env bash
# BERT pretraining, phase 2 (sequence length 512) from the phase-1 weights, with a fresh optimizer
# and schedule (NVIDIA's semantics): global batch 32,768, LAMB lr 4e-3, 1,563 steps, 12.8 % warmup.
#
# Usage: bash pretrain/run_phase2.sh SHARDS_512 PHASE1_OUT OUT_DIR [more run_pretraining.py flags]
#
# Environment: as run_phase1.sh (MODEL, DS_CONFIG, HOSTFILE, LAUNCHER_ARGS, NUM_GPUS, MAX_STEPS [1563],
# LR [4e-3], WARMUP [0.128], CKPT_INTERVAL [200], KEEP, VOCAB_FILE, EVAL_DIR, EVAL_INTERVAL).
# The model config comes from the phase-1 checkpoint. Re-running resumes from OUT_DIR/latest.
set -euo pipefail
if [[ "${1:-}" == -h || "${1:-}" == --help ]]; then  # the comment block above, as usage
  sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"
  exit 0
fi
if [[ $# -lt 3 ]]; then
  sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0" >&2
  exit 2
fi
SHARDS=$1 PHASE1=$2 OUT=$3
shift 3
HERE=$(cd "$(dirname "$0")/.." && pwd)
MODEL=${MODEL:-large}
DEFAULT_DS=$HERE/ds_configs/bert_${MODEL}_phase2_zero2_fp16.json
[[ $MODEL == base ]] && DEFAULT_DS=$HERE/ds_configs/bert_base_phase2_zero1_fp16.json
DS_CONFIG=${DS_CONFIG:-$DEFAULT_DS}
if [[ -n ${HOSTFILE:-} ]]; then
  LAUNCH=(deepspeed --hostfile "$HOSTFILE")
else
  LAUNCH=(deepspeed --num_gpus "${NUM_GPUS:-8}")
fi
read -r -a LAUNCHER <<< "${LAUNCHER_ARGS:-}"  # extra deepspeed launcher flags, e.g. --master_addr HOST
LAUNCH+=("${LAUNCHER[@]}")
EXTRA=()
[[ -n ${VOCAB_FILE:-} ]] && EXTRA+=(--vocab_file "$VOCAB_FILE")
[[ -n ${EVAL_DIR:-} ]] && EXTRA+=(--eval_dir "$EVAL_DIR" --eval_interval "${EVAL_INTERVAL:-500}")
exec "${LAUNCH[@]}" "$HERE/pretrain/run_pretraining.py" \
  --deepspeed_config "$DS_CONFIG" --input_dir "$SHARDS" --init_checkpoint "$PHASE1" --output_dir "$OUT" \
  --max_steps "${MAX_STEPS:-1563}" --learning_rate "${LR:-4e-3}" --warmup_proportion "${WARMUP:-0.128}" \
  --checkpoint_interval "${CKPT_INTERVAL:-200}" --keep_checkpoints "${KEEP:-3}" --resume \
  "${EXTRA[@]}" "$@"
