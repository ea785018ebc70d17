#!/usr/bin/env bash
# The whole data pipeline: download (URLs) -> extract + sentence split -> vocab -> phase-1 and phase-2 HDF5 shards.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: bash data_prep/create_datasets.sh --output DIR --input SRC [--input SRC ...] [options]

Builds pretraining shards from raw corpora, every step resumable (a rerun skips finished work):
  1. download   http(s)/ftp/file URLs into DIR/download (curl with retries and resume);
                .tar/.tar.gz/.tgz/.zip archives (e.g. book folders) are unpacked; local paths
                and s3:// URIs are used in place (no download)
  2. extract    Wikipedia XML(.bz2) / JSONL / book folders / text -> DIR/text (one sentence per line)
  3. vocab      DIR/vocab.txt trained with `tokenizers`, unless --vocab_file is given
  4. shards     DIR/hdf5/seq_len_128_max_pred_20 and DIR/hdf5/seq_len_512_max_pred_80 (default --phases)

Options:
  --output DIR            output directory (required; spaces allowed)
  --input SRC             a URL, local file/folder or s3:// URI (repeatable, required)
  --input_format FMT      auto|wiki|jsonl|books|text (default auto)
  --vocab_file FILE       use this vocab.txt instead of training one
  --vocab_size N          size of a trained vocab (default 30522)
  --cased                 keep case (default: lower-case)
  --phases "L:P ..."      sequence length:max predictions per set (default "128:20 512:80")
  --masking static|dynamic  masked NVIDIA shards, or unmasked for loader-side masking (default static)
  --dupe_factor N         (default 1)    --seed N  (default 12345)
  --num_text_shards N     (default 16)   --num_shards N  HDF5 shards per phase (default 16)
  --workers N             processes (default: number of CPUs)
  --retries N             download retries (default 5)
  -h, --help              this help
Environment: PYTHON (default: the project's .venv/bin/python, else python3); AWS_* for s3:// URIs.
EOF
}

die() { echo "create_datasets.sh: error: $*" >&2; exit 2; }

OUTPUT="" ; INPUTS=() ; FORMAT="auto" ; VOCAB_FILE="" ; VOCAB_SIZE=30522 ; LOWER="--do_lower_case"
PHASES="128:20 512:80" ; MASKING="static" ; DUPE=1 ; SEED=12345 ; TEXT_SHARDS=16 ; SHARDS=16
WORKERS="$(nproc 2>/dev/null || echo 1)" ; RETRIES=5
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -z "${PYTHON:-}" ]]; then  # the project's venv when present, else the python on PATH
  if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --output) OUTPUT="${2:?--output needs a value}"; shift 2 ;;
    --input) INPUTS+=("${2:?--input needs a value}"); shift 2 ;;
    --input_format) FORMAT="${2:?}"; shift 2 ;;
    --vocab_file) VOCAB_FILE="${2:?}"; shift 2 ;;
    --vocab_size) VOCAB_SIZE="${2:?}"; shift 2 ;;
    --cased) LOWER="--no-do_lower_case"; shift ;;
    --phases) PHASES="${2:?}"; shift 2 ;;
    --masking) MASKING="${2:?}"; shift 2 ;;
    --dupe_factor) DUPE="${2:?}"; shift 2 ;;
    --seed) SEED="${2:?}"; shift 2 ;;
    --num_text_shards) TEXT_SHARDS="${2:?}"; shift 2 ;;
    --num_shards) SHARDS="${2:?}"; shift 2 ;;
    --workers) WORKERS="${2:?}"; shift 2 ;;
    --retries) RETRIES="${2:?}"; shift 2 ;;
    *) usage >&2; die "unknown option: $1" ;;
  esac
done
[[ -n "$OUTPUT" ]] || { usage >&2; die "--output is required"; }
[[ ${#INPUTS[@]} -gt 0 ]] || { usage >&2; die "at least one --input is required"; }
[[ -z "$VOCAB_FILE" || -f "$VOCAB_FILE" ]] || die "--vocab_file not found: $VOCAB_FILE"
mkdir -p "$OUTPUT/download"

download() {  # URL -> local path (printed); partial downloads resume, finished ones are skipped
  local url="$1" name dest
  name="$(basename "${url%%\?*}")"
  dest="$OUTPUT/download/$name"
  if [[ ! -f "$dest" ]]; then
    echo "download: $url" >&2
    curl --fail --location --silent --show-error --retry "$RETRIES" --retry-delay 5 --retry-all-errors \
         --continue-at - --output "$dest.partial" "$url" || die "download failed after $RETRIES retries: $url"
    mv "$dest.partial" "$dest"
  fi
  case "$dest" in
    *.tar|*.tar.gz|*.tgz|*.zip)
      local folder="$dest.d"
      if [[ ! -d "$folder" ]]; then
        "$PYTHON" - "$dest" "$folder.partial" <<'PY' || die "cannot unpack $dest"
import shutil, sys, tarfile, zipfile
src, dst = sys.argv[1], sys.argv[2]
shutil.rmtree(dst, ignore_errors=True)
if src.endswith(".zip"):
    zipfile.ZipFile(src).extractall(dst)
else:
    tarfile.open(src).extractall(dst, filter="data")
PY
        mv "$folder.partial" "$folder"
      fi
      dest="$folder" ;;
  esac
  printf '%s\n' "$dest"
}

LOCAL_INPUTS=()
for src in "${INPUTS[@]}"; do
  case "$src" in
    http://*|https://*|ftp://*|file://*) LOCAL_INPUTS+=("$(download "$src")") ;;
    s3://*) LOCAL_INPUTS+=("$src") ;;
    *) [[ -e "$src" ]] || die "input not found: $src"; LOCAL_INPUTS+=("$src") ;;
  esac
done

echo "== extract + sentence split -> $OUTPUT/text" >&2
"$PYTHON" -m bertspeed.data_prep.extract --input "${LOCAL_INPUTS[@]}" --input_format "$FORMAT" \
  --output_dir "$OUTPUT/text" --num_shards "$TEXT_SHARDS" --workers "$WORKERS"

if [[ -z "$VOCAB_FILE" ]]; then
  VOCAB_FILE="$OUTPUT/vocab.txt"
  if [[ ! -f "$VOCAB_FILE" ]]; then
    echo "== vocab -> $VOCAB_FILE" >&2
    "$PYTHON" -m bertspeed.data_prep.vocab --input "$OUTPUT/text" --output "$VOCAB_FILE" --vocab_size "$VOCAB_SIZE" "$LOWER"
  fi
fi

echo "== shards -> $OUTPUT/hdf5" >&2
read -r -a PHASE_LIST <<< "$PHASES"
"$PYTHON" -m bertspeed.data_prep.create_pretraining_data --input "$OUTPUT/text" --vocab_file "$VOCAB_FILE" \
  --output_dir "$OUTPUT/hdf5" --phases "${PHASE_LIST[@]}" --masking "$MASKING" "$LOWER" \
  --dupe_factor "$DUPE" --random_seed "$SEED" --num_shards "$SHARDS" --workers "$WORKERS"
echo "done: $OUTPUT/hdf5" >&2
