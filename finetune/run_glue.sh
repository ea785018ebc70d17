#!/usr/bin/env bash
# Finetune a checkpoint on one GLUE task with BERT-paper hyperparameters.
# Usage: bash finetune/run_glue.sh MODEL GLUE_DIR TASK [OUT] [NUM_GPUS]
# MODEL: a Hugging Face BERT folder or a pretraining run dir; GLUE_DIR: the glue_data folder;
# TASK: CoLA SST-2 MRPC STS-B QQP MNLI QNLI RTE WNLI. NUM_GPUS > 0 launches that many ranks with
# DeepSpeed (DS_CONFIG=path/to/config.json to choose ZeRO stage, bf16, ...); HOSTFILE=hosts launches on
# the hosts of a deepspeed hostfile ("host slots=8" per line) instead. Extra launcher flags:
# LAUNCHER_ARGS="..." (e.g. --master_addr HOST); extra run_glue.py flags: EXTRA="...".
set -euo pipefail
if [[ "${1:-}" == -h || "${1:-}" == --help ]]; then  # the comment block above, as usage
  sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"
  exit 0
fi
MODEL=${1:?usage: run_glue.sh MODEL GLUE_DIR TASK [OUT] [NUM_GPUS]}
GLUE_DIR=${2:?glue_data folder}
TASK=${3:?task name}
OUT=${4:-runs/glue_${TASK}}
NUM_GPUS=${5:-0}
ARGS=(--task_name "$TASK" --data_dir "$GLUE_DIR/$TASK" --model_dir "$MODEL" --output_dir "$OUT"
      --num_train_epochs "${EPOCHS:-3}" --learning_rate "${LR:-2e-5}" --train_batch_size "${BATCH:-32}"
      --max_seq_length "${MAX_SEQ:-128}" --seed "${SEED:-42}")
[[ -n "${DS_CONFIG:-}" ]] && ARGS+=(--deepspeed_config "$DS_CONFIG")
HERE=$(dirname "$0")
if [[ -n "${HOSTFILE:-}" ]]; then
    exec deepspeed --hostfile "$HOSTFILE" ${LAUNCHER_ARGS:-} "$HERE/run_glue.py" "${ARGS[@]}" ${EXTRA:-}
fi
if (( NUM_GPUS > 0 )); then
    exec deepspeed --num_gpus "$NUM_GPUS" ${LAUNCHER_ARGS:-} "$HERE/run_glue.py" "${ARGS[@]}" ${EXTRA:-}
fi
exec "${PYTHON:-python}" "$HERE/run_glue.py" "${ARGS[@]}" ${EXTRA:-}
