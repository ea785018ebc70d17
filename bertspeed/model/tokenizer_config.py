"""Casing and special tokens that travel with a model folder: tokenizer_config.json + special_tokens_map.json
(the files transformers.AutoTokenizer reads beside vocab.txt).

Which casing applies: an explicit flag, else the folder's tokenizer_config.json, else what the vocab
says (a vocab with capitalised tokens is cased). A choice that contradicts the vocab is warned about.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

from bertspeed.model.tokenizer import SPECIAL_TOKENS
from bertspeed.training.atomic import write_json_atomic

TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"
# transformers' names for our special tokens: pad_token "[PAD]", unk_token "[UNK]", ...
SPECIAL_TOKEN_NAMES = {f"{token[1:-1].lower()}_token": token for token in SPECIAL_TOKENS}


def capitalised_tokens(vocab) -> list[str]:
    """Tokens with a capital letter, special tokens such as [CLS] and [unused0] aside."""
    return [t for t in vocab if t != t.lower() and not (t.startswith("[") and t.endswith("]"))]


def vocab_is_cased(vocab) -> bool:
    """A cased vocab keeps capitals (bert-base-cased: ~9,000 tokens); an uncased one has none."""
    return len(capitalised_tokens(vocab)) >= max(1, len(vocab) // 1000)


def read_do_lower_case(folder) -> bool | None:
    """do_lower_case of FOLDER/tokenizer_config.json, None without the file or the field."""
    path = Path(folder) / TOKENIZER_CONFIG
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
        value = config.get("do_lower_case")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
        raise ValueError(f"{path}: not a JSON object ({e})") from None
    if value is not None and not isinstance(value, bool):
        raise ValueError(f"{path}: do_lower_case must be true or false, got {value!r}")
    strip_accents = config.get("strip_accents")
    if config.get("tokenize_chinese_chars", True) is not True or strip_accents not in (None, value):
        warnings.warn(f"{path}: strip_accents {strip_accents!r} / tokenize_chinese_chars "
                      f"{config.get('tokenize_chinese_chars')!r} are not applied: bertspeed strips accents exactly "
                      "when it lower-cases and always splits CJK characters", stacklevel=2)
    return value


def decide_do_lower_case(vocab, vocab_path, flag: bool | None = None, folder=None) -> bool:
    """The casing to tokenize with: `flag`, else FOLDER's tokenizer_config.json, else the vocab's own."""
    value, origin = flag, "the flag"
    if value is None and folder is not None:
        value, origin = read_do_lower_case(folder), str(Path(folder) / TOKENIZER_CONFIG)
    cased = vocab_is_cased(vocab)
    if value is None:
        return not cased
    if value and cased:
        examples = ", ".join(repr(t) for t in capitalised_tokens(vocab)[:3])
        warnings.warn(f"do_lower_case is true ({origin}) but {vocab_path} is a cased vocab ({examples}, ...): "
                      "its capitalised tokens can never be produced", stacklevel=2)
    elif not value and not cased:
        warnings.warn(f"do_lower_case is false ({origin}) but {vocab_path} has no capitalised tokens: "
                      "capitalised words will become [UNK] or rarer pieces", stacklevel=2)
    return value


def tokenizer_files(do_lower_case: bool, model_max_length: int) -> dict[str, dict]:
    """File name -> JSON content of the tokenizer files beside vocab.txt."""
    config = {"tokenizer_class": "BertTokenizer", "do_lower_case": do_lower_case, "tokenize_chinese_chars": True,
              "strip_accents": None, "model_max_length": model_max_length, **SPECIAL_TOKEN_NAMES}
    return {TOKENIZER_CONFIG: config, SPECIAL_TOKENS_MAP: dict(SPECIAL_TOKEN_NAMES)}


def write_tokenizer_files(folder, do_lower_case: bool, model_max_length: int) -> None:
    for name, content in tokenizer_files(do_lower_case, model_max_length).items():
        write_json_atomic(Path(folder) / name, content)
