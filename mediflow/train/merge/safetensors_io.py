"""Streaming safetensors I/O: read row ranges of one tensor, write shards without holding them.

Reading goes through ``safetensors.safe_open`` (a memory map) and is opened per read, so a merge
never keeps whole models mapped and resident: only the rows asked for are touched.

Writing cannot use ``safetensors.torch.save_file``, which needs every tensor of a shard in memory at
once. Because all output names, shapes and dtypes are known before the first tensor is merged, the
shard layout (and so each shard's header) is planned up front, and tensor bytes are then appended
chunk by chunk in exactly the order the header promises. The format is simple and stable: an 8-byte
little-endian header length, a JSON header (padded to 8 bytes) with ``dtype``/``shape``/
``data_offsets`` per tensor, then the raw little-endian bytes.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import torch
from safetensors import safe_open

from mediflow.errors import MediflowError

#: safetensors dtype names <-> torch dtypes (the ones model checkpoints use).
SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
_DTYPE_NAMES = {dtype: name for name, dtype in SAFETENSORS_DTYPES.items()}

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


@dataclass(frozen=True)
class TensorInfo:
    """Where a tensor lives and what it looks like, read from a shard header."""

    file: Path
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


class ModelFolder:
    """A Hugging Face model folder's safetensors weights, read lazily tensor by tensor."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.tensors: dict[str, TensorInfo] = {}
        for file in self._weight_files():
            with safe_open(str(file), framework="pt") as handle:
                for name in handle.keys():
                    view = handle.get_slice(name)
                    self.tensors[name] = TensorInfo(file, tuple(view.get_shape()), SAFETENSORS_DTYPES[view.get_dtype()])

    def _weight_files(self) -> list[Path]:
        index = self.path / INDEX_FILE
        if index.is_file():
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            return [self.path / name for name in dict.fromkeys(weight_map.values())]
        if (self.path / SINGLE_FILE).is_file():
            return [self.path / SINGLE_FILE]
        files = sorted(self.path.glob("*.safetensors"))
        if not files:
            raise MediflowError(f"{self.path}: no safetensors weights (model.safetensors or {INDEX_FILE})")
        return files

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def info(self, name: str) -> TensorInfo:
        return self.tensors[name]

    def read(self, name: str) -> torch.Tensor:
        """The whole tensor, as stored."""
        shape = self.tensors[name].shape
        return self.read_rows(name, 0, shape[0] if shape else 1)

    def read_rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows ``[start, stop)`` along dim 0 (the whole tensor for a 0-d one), as stored."""
        info = self.tensors[name]
        with safe_open(str(info.file), framework="pt") as handle:
            rows: torch.Tensor = handle.get_tensor(name) if not info.shape else handle.get_slice(name)[start:stop]
            return rows


def dtype_name(dtype: torch.dtype) -> str:
    """The safetensors name of a torch dtype (``F32``...)."""
    return _DTYPE_NAMES[dtype]


@dataclass
class _Shard:
    file_name: str
    entries: list[tuple[str, tuple[int, ...], torch.dtype]] = field(default_factory=list)
    size: int = 0


def _nbytes(shape: tuple[int, ...], dtype: torch.dtype) -> int:
    return math.prod(shape) * torch.empty((), dtype=dtype).element_size()


def plan_shards(tensors: list[tuple[str, tuple[int, ...], torch.dtype]], max_shard_bytes: int) -> list[_Shard]:
    """Group tensors, in order, into shards of at most ``max_shard_bytes`` (a larger tensor gets its own)."""
    shards: list[_Shard] = []
    for name, shape, dtype in tensors:
        size = _nbytes(shape, dtype)
        if not shards or (shards[-1].entries and shards[-1].size + size > max_shard_bytes):
            shards.append(_Shard(file_name=""))
        shards[-1].entries.append((name, shape, dtype))
        shards[-1].size += size
    for number, shard in enumerate(shards, start=1):
        shard.file_name = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
    return shards


class ShardedWriter:
    """Writes planned tensors to safetensors shards as their chunks arrive, then the index.

    Use :meth:`tensors` to get the names in the order the bytes must be written, and for each name
    call :meth:`write` with consecutive chunks (rows along dim 0) until the tensor is complete.
    """

    def __init__(self, folder: Path, tensors: list[tuple[str, tuple[int, ...], torch.dtype]], max_shard_bytes: int):
        self.folder = Path(folder)
        self._shards = plan_shards(tensors, max_shard_bytes)
        self._shard_of = {name: shard for shard in self._shards for name, _, _ in shard.entries}
        self._expected = {name: _nbytes(shape, dtype) for name, shape, dtype in tensors}
        self._dtypes = {name: dtype for name, _, dtype in tensors}
        self._order = list(self.tensors())
        self._cursor = 0
        self._written: dict[str, int] = {}
        self._open_shard: _Shard | None = None
        self._handle: BinaryIO | None = None

    def tensors(self) -> Iterator[str]:
        for shard in self._shards:
            for name, _, _ in shard.entries:
                yield name

    def write(self, name: str, chunk: torch.Tensor) -> None:
        """Append the next chunk of ``name`` (already in the planned dtype), in :meth:`tensors` order."""
        while self._order[self._cursor] != name and self._cursor + 1 < len(self._order) and self._written.get(self._order[self._cursor], 0) == self._expected[self._order[self._cursor]]:
            self._cursor += 1
        if self._order[self._cursor] != name:
            raise ValueError(f"{name}: written out of order (expected {self._order[self._cursor]})")
        if chunk.dtype != self._dtypes[name]:
            raise ValueError(f"{name}: chunk dtype {chunk.dtype} differs from the planned {self._dtypes[name]}")
        handle = self._handle_for(self._shard_of[name])
        data = chunk.contiguous().reshape(-1).view(torch.uint8).numpy()
        handle.write(data.data)
        self._written[name] = self._written.get(name, 0) + data.nbytes
        if self._written[name] > self._expected[name]:
            raise ValueError(f"{name}: more bytes written than its shape holds")

    def _handle_for(self, shard: _Shard) -> BinaryIO:
        if shard is not self._open_shard:
            self._close_shard()
            self._open_shard = shard
            self._handle = open(self.folder / shard.file_name, "wb")
            self._handle.write(_header_bytes(shard))
        assert self._handle is not None
        return self._handle

    def _close_shard(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def finish(self) -> None:
        """Check that every tensor got all its bytes, close the last shard and write the index."""
        self._close_shard()
        missing = [name for name, size in self._expected.items() if self._written.get(name, 0) != size]
        if missing:
            raise ValueError(f"incomplete tensors in the merged model: {missing[:5]}")
        index = {
            "metadata": {"total_size": sum(self._expected.values())},
            "weight_map": {name: self._shard_of[name].file_name for name in self._expected},
        }
        (self.folder / INDEX_FILE).write_text(json.dumps(index, indent=2), encoding="utf-8")


def _header_bytes(shard: _Shard) -> bytes:
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape, dtype in shard.entries:
        size = _nbytes(shape, dtype)
        header[name] = {"dtype": dtype_name(dtype), "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)
    return struct.pack("<Q", len(encoded)) + encoded
