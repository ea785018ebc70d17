"""Train a BERT WordPiece vocab.txt with Hugging Face `tokenizers` (BERT normalisation and
pre-tokenisation: lowercase or cased, CJK characters split one by one).

    python -m bertspeed.data_prep.vocab --input text/ --output vocab.txt --vocab_size 30522
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
from tqdm import tqdm

from bertspeed.data_prep.create_pretraining_data import TEXT_SUFFIXES
from bertspeed.data_prep.readers import iter_segmented_documents
from bertspeed.data_prep.storage import StorageError, list_files
from bertspeed.model.tokenizer import SPECIAL_TOKENS
from bertspeed.training.atomic import write_lines_atomic


def train_vocab(lines, vocab_size: int, lowercase: bool = True, min_frequency: int = 2,
                limit_alphabet: int = 1000) -> list[str]:
    """Tokens in id order: [PAD] [UNK] [CLS] [SEP] [MASK], then the learned pieces."""
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                strip_accents=None, lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                        special_tokens=list(SPECIAL_TOKENS), limit_alphabet=limit_alphabet,
                                        continuing_subword_prefix="##", show_progress=False)
    tok.train_from_iterator(lines, trainer=trainer)
    vocab = tok.get_vocab()
    if len(vocab) <= len(SPECIAL_TOKENS):
        raise ValueError("no text to train a vocab on")
    return sorted(vocab, key=vocab.__getitem__)


def _first_bytes(lines, limit: int):
    seen = 0
    for line in lines:
        if seen >= limit:
            return
        seen += len(line.encode("utf-8")) + 1
        yield line


def write_vocab(tokens: list[str], path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_lines_atomic(path, tokens)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bertspeed.data_prep.vocab", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--input", nargs="+", required=True, help="text files/folders/s3 prefixes, one sentence per line")
    p.add_argument("--output", required=True, help="vocab.txt to write")
    p.add_argument("--vocab_size", type=int, default=30522)
    p.add_argument("--do_lower_case", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--min_frequency", type=int, default=2)
    p.add_argument("--limit_alphabet", type=int, default=1000)
    p.add_argument("--max_bytes", type=int, default=0,
                   help="train on the first N bytes of text only (0: all); a few GB give a stable vocab")
    args = p.parse_args(argv)
    if args.vocab_size <= len(SPECIAL_TOKENS):
        p.error(f"--vocab_size must exceed {len(SPECIAL_TOKENS)}")
    try:
        files = list_files(args.input, TEXT_SUFFIXES)
        lines = (line for uri in tqdm(files, desc="vocab", unit="file")
                 for doc in iter_segmented_documents(uri) for line in doc)
        if args.max_bytes:
            lines = _first_bytes(lines, args.max_bytes)
        tokens = train_vocab(lines, args.vocab_size, args.do_lower_case, args.min_frequency, args.limit_alphabet)
    except (StorageError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    write_vocab(tokens, args.output)
    print(f"{len(tokens)} tokens -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
