"""BERT WordPiece tokenizer over Hugging Face `tokenizers` (ids identical to BertTokenizerFast)."""
from __future__ import annotations

import os
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def read_vocab(vocab_file: str | os.PathLike) -> dict[str, int]:
    path = Path(vocab_file)
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except FileNotFoundError:
        raise FileNotFoundError(f"vocab file not found: {path}") from None
    except IsADirectoryError:
        raise ValueError(f"{path}: is a folder, expected a vocab.txt file") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a UTF-8 text vocab (byte {e.start} is 0x{e.object[e.start]:02x})") from None
    if any("\0" in line for line in lines):
        raise ValueError(f"{path}: a binary file, expected a UTF-8 text vocab")
    if lines and lines[-1] == "":
        lines.pop()
    vocab = {}
    for token in lines:
        vocab.setdefault(token.rstrip("\r"), len(vocab))
    missing = [t for t in SPECIAL_TOKENS if t not in vocab]
    if missing:
        raise ValueError(f"{path}: vocab lacks special tokens {missing}")
    return vocab


class BertTokenizer:
    """Lower-cased or cased BERT WordPiece; [CLS] A [SEP] (B [SEP]) with segment ids 0/1."""

    def __init__(self, vocab: dict[str, int], do_lower_case: bool = True):
        self.vocab = vocab
        self.do_lower_case = do_lower_case
        tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
        tok.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=do_lower_case)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        cls, sep = self.cls_id, self.sep_id
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
        tok.decoder = decoders.WordPiece(prefix="##")
        tok.add_special_tokens(list(SPECIAL_TOKENS))  # already in the vocab: ids do not change
        self.backend = tok

    @classmethod
    def from_vocab_file(cls, vocab_file, do_lower_case: bool | None = None) -> "BertTokenizer":
        """do_lower_case None: the tokenizer_config.json beside the vocab, else the vocab's own casing (a cased
        vocab stays cased); a value that contradicts the vocab is warned about."""
        from bertspeed.model.tokenizer_config import decide_do_lower_case
        vocab = read_vocab(vocab_file)
        return cls(vocab, decide_do_lower_case(vocab, vocab_file, do_lower_case, Path(vocab_file).parent))

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def __getattr__(self, name):
        # pad_id, unk_id, cls_id, sep_id, mask_id
        if name.endswith("_id") and f"[{name[:-3].upper()}]" in SPECIAL_TOKENS:
            return self.vocab[f"[{name[:-3].upper()}]"]
        raise AttributeError(name)

    def tokenize(self, text: str) -> list[str]:
        """WordPiece tokens without special tokens."""
        return self.backend.encode(text, add_special_tokens=False).tokens

    def token_ids(self, texts: list[str]) -> list[list[int]]:
        """WordPiece ids without special tokens, for many texts at once."""
        return [e.ids for e in self.backend.encode_batch(texts, add_special_tokens=False)]

    def convert_ids_to_tokens(self, ids) -> list[str]:
        return [self.backend.id_to_token(int(i)) for i in ids]

    def decode(self, ids) -> str:
        return self.backend.decode(list(map(int, ids)), skip_special_tokens=True)

    def encode_batch(self, texts, pairs=None, max_length: int | None = None, padding: bool = True,
                     return_tensors: str | None = None) -> dict:
        """Encode texts (and optional second segments) with truncation (longest first) to max_length.
        Returns input_ids, token_type_ids, attention_mask (and offsets) as lists or "pt" tensors."""
        backend = self.backend
        if max_length is not None:
            backend.enable_truncation(max_length, strategy="longest_first")
        else:
            backend.no_truncation()
        if padding:
            backend.enable_padding(pad_id=self.pad_id, pad_token="[PAD]")
        else:
            backend.no_padding()
        inputs = list(texts) if pairs is None else list(zip(texts, pairs))
        encodings = backend.encode_batch(inputs)
        out = {"input_ids": [e.ids for e in encodings], "token_type_ids": [e.type_ids for e in encodings],
               "attention_mask": [e.attention_mask for e in encodings]}
        if return_tensors == "pt":
            import torch  # lazily: data_prep uses this tokenizer without paying for torch
            return {k: torch.tensor(v, dtype=torch.long) for k, v in out.items()}
        out["offsets"] = [e.offsets for e in encodings]
        return out

    def encode(self, text: str, pair: str | None = None, max_length: int | None = None) -> dict:
        out = self.encode_batch([text], None if pair is None else [pair], max_length, padding=False)
        return {k: v[0] for k, v in out.items()}
