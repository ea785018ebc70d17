#!/usr/bin/env bash
# Finetune a checkpoint on SQuAD v1.1 (or v2.0 with V2=1) with BERT-paper hyperparameters.
# Usage: bash finetune/run_squad.sh MODEL TRAIN.json DEV.json [OUT] [NUM_GPUS]
# MODEL: a Hugging Face BERT folder or a pretraining run dir. NUM_GPUS > 0 launches that many ranks
# with DeepSpeed (DS_CONFIG=path/to/config.json to choose ZeRO stage, bf16, ...); HOSTFILE=hosts launches
# on the hosts of a deepspeed hostfile ("host slots=8" per line) instead. Extra launcher flags:
# LAUNCHER_ARGS="..." (e.g. --master_addr HOST); extra run_squad.py flags: EXTRA="...".
set -euo pipefail
if [[ "${1:-}" == -h || "${1:-}" == --help ]]; then  # the comment block above, as usage
  sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"
  exit 0
fi
MODEL=${1:?usage: run_squad.sh MODEL TRAIN.json DEV.json [OUT] [NUM_GPUS]}
TRAIN=${2:?SQuAD train file}
DEV=${3:?SQuAD dev file}
OUT=${4:-runs/squad}
NUM_GPUS=${5:-0}
ARGS=(--train_file "$TRAIN" --predict_file "$DEV" --model_dir "$MODEL" --output_dir "$OUT"
      --num_train_epochs "${EPOCHS:-2}" --learning_rate "${LR:-3e-5}" --train_batch_size "${BATCH:-32}"
      --max_seq_length "${MAX_SEQ:-384}" --doc_stride "${DOC_STRIDE:-128}" --seed "${SEED:-42}")
[[ "${V2:-0}" == 1 ]] && ARGS+=(--version_2_with_negative)
[[ -n "${DS_CONFIG:-}" ]] && ARGS+=(--deepspeed_config "$DS_CONFIG")
HERE=$(dirname "$0")
if [[ -n "${HOSTFILE:-}" ]]; then
    exec deepspeed --hostfile "$HOSTFILE" ${LAUNCHER_ARGS:-} "$HERE/run_squad.py" "${ARGS[@]}" ${EXTRA:-}
fi
if (( NUM_GPUS > 0 )); then
    exec deepspeed --num_gpus "$NUM_GPUS" ${LAUNCHER_ARGS:-} "$HERE/run_squad.py" "${ARGS[@]}" ${EXTRA:-}
fi
exec "${PYTHON:-python}" "$HERE/run_squad.py" "${ARGS[@]}" ${EXTRA:-}
