"""Train a BERT WordPiece vocab.txt with Hugging Face `tokenizers` (BERT normalisation and
pre-tokenisation: lowercase or cased, CJK characters split one by one).

    python -m bertspeed.data_prep.vocab --input text/ --output vocab.txt --vocab_size 30522
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
from tqdm import tqdm

from bertspeed.data_prep.create_pretraining_data import TEXT_SUFFIXES
from bertspeed.data_prep.readers import iter_segmented_documents
from bertspeed.data_prep.storage import StorageError, list_files
from bertspeed.model.tokenizer import SPECIAL_TOKENS
from bertspeed.training.atomic import write_lines_atomic
from bertspeed.training.pathcheck import check_output_file
from bertspeed.training.settings import parse, setting


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


@dataclass(kw_only=True)
class VocabSettings:
    input: list[str] = setting(help="text files/folders/s3 prefixes, one sentence per line")
    output: str = setting(help="vocab.txt to write")
    vocab_size: int = setting(30522, help="tokens in the vocab, the special tokens included")
    do_lower_case: bool = setting(True, help="lower-case the text before learning pieces (uncased vocab)")
    min_frequency: int = setting(2, help="a pair of pieces seen fewer times is not merged into a new piece")
    limit_alphabet: int = setting(1000, help="at most this many distinct characters in the initial alphabet")
    max_bytes: int = setting(0, help="train on the first N bytes of text only (0: all); a few GB give a stable vocab")

    def __post_init__(self):
        if self.vocab_size <= len(SPECIAL_TOKENS):
            raise ValueError(f"--vocab_size must exceed {len(SPECIAL_TOKENS)}, got {self.vocab_size}")
        for name in ("min_frequency", "limit_alphabet", "max_bytes"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name} must be >= 0, got {getattr(self, name)}")
        check_output_file("--output", self.output)


def main(argv=None) -> int:
    args = parse(VocabSettings, argv, prog="python -m bertspeed.data_prep.vocab", description=__doc__.split("\n\n")[0])
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
