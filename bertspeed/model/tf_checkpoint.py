"""Read a TensorFlow checkpoint (tensor bundle) without TensorFlow.

`PREFIX.index` is a LevelDB-format table (footer, index block, data blocks, each block followed by a
type byte and a masked CRC-32C) mapping each variable name to a BundleEntryProto (dtype, shape, shard,
offset, size, masked CRC-32C of the bytes); the key "" holds the BundleHeaderProto (shard count,
endianness). `PREFIX.data-0000S-of-0000N` hold the raw little-endian tensor bytes. Every block and tensor
checksum is verified; an error names the file and the variable.
"""
from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from bertspeed.model.checkpoint import CheckpointError
from bertspeed.model.crc32c import crc32c, unmask

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48
BLOCK_TRAILER = 5  # type byte + masked crc32c
# tensorflow/core/framework/types.proto DataType -> torch dtype
DTYPES = {1: torch.float32, 2: torch.float64, 3: torch.int32, 4: torch.uint8, 5: torch.int16, 6: torch.int8,
          9: torch.int64, 10: torch.bool, 14: torch.bfloat16, 19: torch.float16}


@dataclass
class Entry:
    """A BundleEntryProto."""
    dtype: int = 0
    shape: tuple = ()
    shard_id: int = 0
    offset: int = 0
    size: int = 0
    masked_crc32c: int = 0
    sliced: bool = False


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _fields(buf: bytes):
    """(field number, value) of a protobuf message: ints for varint/fixed fields, bytes for the rest."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = struct.unpack_from("<Q", buf, pos)[0], pos + 8
        elif wire == 5:
            value, pos = struct.unpack_from("<I", buf, pos)[0], pos + 4
        elif wire == 2:
            length, pos = _varint(buf, pos)
            value, pos = buf[pos:pos + length], pos + length
            if pos > len(buf):
                raise ValueError("truncated field")
        else:
            raise ValueError(f"unsupported wire type {wire}")
        yield number, value


def _shape(buf: bytes) -> tuple:
    dims = []
    for number, value in _fields(buf):
        if number == 2:  # Dim
            dims.append(next((v for n, v in _fields(value) if n == 1), 0))
        elif number == 3 and value:
            raise ValueError("unknown rank")
    return tuple(d - (1 << 64) if d >= 1 << 63 else d for d in dims)


def parse_entry(buf: bytes) -> Entry:
    entry = Entry()
    for number, value in _fields(buf):
        if number == 1:
            entry.dtype = value
        elif number == 2:
            entry.shape = _shape(value)
        elif number in (3, 4, 5, 6):
            setattr(entry, ("shard_id", "offset", "size", "masked_crc32c")[number - 3], value)
        elif number == 7:
            entry.sliced = True
    return entry


def _block(data: bytes, offset: int, size: int, path: Path) -> bytes:
    end = offset + size + BLOCK_TRAILER
    if end > len(data):
        raise CheckpointError(f"{path}: truncated (a block at bytes {offset}-{end} lies past the end, {len(data)})")
    kind, stored = data[offset + size], struct.unpack_from("<I", data, offset + size + 1)[0]
    if crc32c(data[offset:offset + size + 1]) != unmask(stored):
        raise CheckpointError(f"{path}: checksum mismatch in the block at byte {offset} (corrupt index)")
    if kind != 0:
        raise CheckpointError(f"{path}: block at byte {offset} is compressed (type {kind}); TensorFlow writes "
                              "checkpoint indexes uncompressed and compressed tables are not supported")
    return data[offset:offset + size]


def _block_entries(block: bytes):
    """(key, value) pairs of one table block (keys prefix-compressed against the previous key)."""
    restarts = struct.unpack_from("<I", block, len(block) - 4)[0]
    end, pos, key = len(block) - 4 * (restarts + 1), 0, b""
    while pos < end:
        shared, pos = _varint(block, pos)
        unshared, pos = _varint(block, pos)
        length, pos = _varint(block, pos)
        key = key[:shared] + block[pos:pos + unshared]
        pos += unshared
        yield key, block[pos:pos + length]
        pos += length


def read_index(path: Path) -> tuple[int, dict[str, Entry]]:
    """(number of data shards, variable name -> Entry) of a checkpoint's .index file."""
    data = Path(path).read_bytes()
    if len(data) < FOOTER_SIZE or struct.unpack_from("<Q", data, len(data) - 8)[0] != TABLE_MAGIC:
        raise CheckpointError(f"{path}: not a TensorFlow checkpoint index (no table footer)")
    try:
        footer = data[-FOOTER_SIZE:]
        _, pos = _varint(footer, _varint(footer, 0)[1])  # skip the metaindex handle
        index_offset, pos = _varint(footer, pos)
        index_size, _ = _varint(footer, pos)
        header, entries = {}, {}
        for _, handle in _block_entries(_block(data, index_offset, index_size, path)):
            offset, pos = _varint(handle, 0)
            for key, value in _block_entries(_block(data, offset, _varint(handle, pos)[0], path)):
                if key == b"":  # BundleHeaderProto: 1 num_shards, 2 endianness
                    header = dict(_fields(value))
                else:
                    entries[key.decode("utf-8")] = parse_entry(value)
    except CheckpointError:
        raise
    except (ValueError, struct.error, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: corrupt checkpoint index ({e})") from None
    if header.get(2, 0) != 0:
        raise CheckpointError(f"{path}: big-endian checkpoints are not supported")
    return header.get(1, 1), entries


def data_file(prefix: Path, shard: int, shards: int) -> Path:
    return prefix.parent / f"{prefix.name}.data-{shard:05d}-of-{shards:05d}"


class BundleReader:
    """Variables of the checkpoint PREFIX (PREFIX.index + PREFIX.data-*) as torch tensors."""

    def __init__(self, prefix):
        self.prefix = Path(str(prefix).removesuffix(".index"))
        self.index = self.prefix.parent / f"{self.prefix.name}.index"
        if not self.index.is_file():
            raise FileNotFoundError(f"TensorFlow checkpoint index not found: {self.index}")
        self.shards, self.entries = read_index(self.index)

    def tensor(self, name: str) -> torch.Tensor:
        entry = self.entries[name]
        path = data_file(self.prefix, entry.shard_id, self.shards)
        dtype = self._check(name, entry, path)
        with open(path, "rb") as f:
            f.seek(entry.offset)
            raw = bytearray(f.read(entry.size))
        if crc32c(raw) != unmask(entry.masked_crc32c):
            raise CheckpointError(f"{path}: checksum mismatch for variable {name!r} (corrupt data file)")
        if not raw:
            return torch.zeros(entry.shape, dtype=dtype)
        return torch.frombuffer(raw, dtype=dtype).reshape(entry.shape)

    def _check(self, name: str, entry: Entry, path: Path) -> torch.dtype:
        """The variable's torch dtype, once its entry and data file are known to be readable."""
        if entry.sliced:
            raise CheckpointError(f"{self.index}: variable {name!r} is partitioned (slices), not supported")
        if entry.dtype not in DTYPES:
            raise CheckpointError(f"{self.index}: variable {name!r} has TensorFlow dtype {entry.dtype}, "
                                  "which is not a numeric type we read")
        dtype = DTYPES[entry.dtype]
        expected = math.prod(entry.shape) * dtype.itemsize
        if entry.size != expected:
            raise CheckpointError(f"{self.index}: variable {name!r} of shape {entry.shape} has {entry.size} bytes, "
                                  f"expected {expected}")
        if not path.is_file():
            raise CheckpointError(f"{path}: data file missing (needed for variable {name!r})")
        length = path.stat().st_size
        if entry.offset + entry.size > length:
            raise CheckpointError(f"{path}: variable {name!r} lies at bytes {entry.offset}-{entry.offset + entry.size}"
                                  f" but the file has {length} bytes (truncated file, or an index pointing past it)")
        return dtype
