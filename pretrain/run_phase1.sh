#!/usr/bin/env bash
# BERT pretraining, phase 1 (sequence length 128), NVIDIA's recipe by default:
# global batch 65,536, LAMB lr 6e-3, 7,038 steps, 28.43 % warmup.
#
# Usage: bash pretrain/run_phase1.sh SHARDS_128 OUT_DIR [more run_pretraining.py flags]
#
# Environment (defaults in brackets):
#   MODEL [large]          model preset: tiny mini small medium base large (or MODEL_CONFIG=config.json)
#   DS_CONFIG              [ds_configs/bert_${MODEL}_phase1_zero2_fp16.json, zero1 for base]
#   HOSTFILE               multi-node: a deepspeed hostfile ("host slots=8" per line); else one node
#   LAUNCHER_ARGS          more deepspeed launcher flags, e.g. "--master_addr HOST --master_port 29500"
#   NUM_GPUS [8]           ranks on one node (on a CPU machine: CPU ranks)
#   MAX_STEPS [7038]  LR [6e-3]  WARMUP [0.2843]  CKPT_INTERVAL [200]  KEEP [3]
#   VOCAB_FILE             copied into checkpoints (needed for dynamic-masking shards)
#   EVAL_DIR               held-out shards, evaluated every EVAL_INTERVAL [1000] steps
# Re-running the same command resumes from OUT_DIR/latest.
set -euo pipefail
if [[ "${1:-}" == -h || "${1:-}" == --help ]]; then  # the comment block above, as usage
  sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"
  exit 0
fi
if [[ $# -lt 2 ]]; then
  sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0" >&2
  exit 2
fi
SHARDS=$1 OUT=$2
shift 2
HERE=$(cd "$(dirname "$0")/.." && pwd)
MODEL=${MODEL:-large}
DEFAULT_DS=$HERE/ds_configs/bert_${MODEL}_phase1_zero2_fp16.json
[[ $MODEL == base ]] && DEFAULT_DS=$HERE/ds_configs/bert_base_phase1_zero1_fp16.json
DS_CONFIG=${DS_CONFIG:-$DEFAULT_DS}
if [[ -n ${HOSTFILE:-} ]]; then
  LAUNCH=(deepspeed --hostfile "$HOSTFILE")
else
  LAUNCH=(deepspeed --num_gpus "${NUM_GPUS:-8}")
fi
read -r -a LAUNCHER <<< "${LAUNCHER_ARGS:-}"  # extra deepspeed launcher flags, e.g. --master_addr HOST
LAUNCH+=("${LAUNCHER[@]}")
MODEL_ARGS=(--model_preset "$MODEL")
[[ -n ${MODEL_CONFIG:-} ]] && MODEL_ARGS=(--config_file "$MODEL_CONFIG")
EXTRA=()
[[ -n ${VOCAB_FILE:-} ]] && EXTRA+=(--vocab_file "$VOCAB_FILE")
[[ -n ${EVAL_DIR:-} ]] && EXTRA+=(--eval_dir "$EVAL_DIR" --eval_interval "${EVAL_INTERVAL:-1000}")
exec "${LAUNCH[@]}" "$HERE/pretrain/run_pretraining.py" \
  --deepspeed_config "$DS_CONFIG" --input_dir "$SHARDS" --output_dir "$OUT" "${MODEL_ARGS[@]}" \
  --max_steps "${MAX_STEPS:-7038}" --learning_rate "${LR:-6e-3}" --warmup_proportion "${WARMUP:-0.2843}" \
  --checkpoint_interval "${CKPT_INTERVAL:-200}" --keep_checkpoints "${KEEP:-3}" --resume \
  "${EXTRA[@]}" "$@"
