"""Re-chunk an ONNX model's external data into files of at most a given size.

transformers.js (v3.4 and later) loads `<name>.onnx` with its weights in
`<name>.onnx_data`, `<name>.onnx_data_1`, `<name>.onnx_data_2`, ... when config.json's
`transformers.js_config.use_external_data_format` gives the number of chunks; it hands the
browser runtime each chunk under its bare file name, so the locations written into the
model are bare names too (no folder). Browsers fetch and cache one file per request, so
smaller chunks resume, cache and download in parallel better than one multi-GB file.

The rules:
- a tensor is never split across chunks; tensors are packed in the model's own order;
- a tensor larger than the shard size gets a chunk of its own, with a warning;
- tensors already stored externally stay external, and initializers with raw data of at
  least 1 KiB that were inline move out too (onnx's own default `size_threshold`); smaller
  initializers and tensors inside node attributes (Constant values) stay inline, as
  `onnx.save_model(..., save_as_external_data=True)` leaves them;
- tensors over 1 MiB start at a multiple of 64 KiB, as torch.onnx and ONNX Runtime align
  them, so native runtimes can mmap them; the padding counts against the shard size.

Weights are copied tensor by tensor from the source files, never loaded whole.
"""

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import onnx
from onnx import AttributeProto, GraphProto, ModelProto, TensorProto

LOG = logging.getLogger("foundry.publish")

MIB = 1024 * 1024
INLINE_THRESHOLD = 1024          # onnx.external_data_helper's default size_threshold
ALIGN_THRESHOLD = MIB            # tensors above this start on an ALIGNMENT boundary
ALIGNMENT = 64 * 1024            # the mmap allocation granularity of Windows, a multiple of every page size
_COPY_BLOCK = 16 * MIB


def chunk_name(model_name: str, index: int) -> str:
    """The file transformers.js fetches for chunk `index` of `model_name` (e.g. model_q4.onnx)."""
    return f"{model_name}_data" if index == 0 else f"{model_name}_data_{index}"


def chunk_names(model_name: str, count: int) -> list[str]:
    return [chunk_name(model_name, index) for index in range(count)]


@dataclass
class Placement:
    """Where one tensor goes: chunk index, offset in that chunk, length."""

    name: str
    chunk: int
    offset: int
    length: int


@dataclass
class ChunkPlan:
    placements: list[Placement] = field(default_factory=list)
    chunk_sizes: list[int] = field(default_factory=list)
    oversized: list[tuple[str, int]] = field(default_factory=list)


def align(offset: int, length: int, align_threshold: int, alignment: int) -> int:
    if length > align_threshold and offset % alignment:
        return offset + alignment - offset % alignment
    return offset


def plan_chunks(
    sizes: list[tuple[str, int]], shard_bytes: int, *, align_threshold: int = ALIGN_THRESHOLD, alignment: int = ALIGNMENT,
) -> ChunkPlan:
    """Pack tensors, in order, into chunks of at most `shard_bytes` (padding included).

    Greedy and order-preserving: a tensor that does not fit in the current chunk starts the
    next one; one that does not fit in any chunk gets its own (recorded in `oversized`).
    """
    if shard_bytes <= 0:
        raise ValueError(f"shard size must be positive, got {shard_bytes} bytes")
    plan = ChunkPlan()
    current = -1        # index of the open chunk, -1 when none is open
    used = 0
    for name, length in sizes:
        if length > shard_bytes:
            plan.oversized.append((name, length))
            plan.chunk_sizes.append(length)
            plan.placements.append(Placement(name, len(plan.chunk_sizes) - 1, 0, length))
            current = -1      # nothing shares a chunk with an oversized tensor
            continue
        offset = align(used, length, align_threshold, alignment) if current >= 0 else 0
        if current < 0 or offset + length > shard_bytes:
            plan.chunk_sizes.append(0)
            current, offset = len(plan.chunk_sizes) - 1, 0
        plan.placements.append(Placement(name, current, offset, length))
        used = offset + length
        plan.chunk_sizes[current] = used
    return plan


@dataclass(frozen=True)
class ChunkedModel:
    """The result of `rechunk`: the model file, its chunks in order, and counts."""

    model_file: Path
    chunks: tuple[Path, ...]
    external_tensors: int
    inline_tensors: int
    data_bytes: int
    oversized: tuple[tuple[str, int], ...]

    @property
    def files(self) -> tuple[Path, ...]:
        return (self.model_file, *self.chunks)

    @property
    def size_bytes(self) -> int:
        return sum(path.stat().st_size for path in self.files)


# --- walking every tensor of a model -------------------------------------------------------

def _graph_tensors(graph: GraphProto) -> Iterator[tuple[TensorProto, bool]]:
    """(tensor, may_move_out) for every tensor of a graph, subgraphs included.

    Only dense initializers may move from inline to external, as onnx's own saver does;
    sparse ones and attribute tensors are re-chunked only if they were external already.
    """
    for tensor in graph.initializer:
        yield tensor, True
    for sparse in graph.sparse_initializer:
        yield sparse.values, False
        yield sparse.indices, False
    yield from _node_tensors(graph.node)


def _node_tensors(nodes) -> Iterator[tuple[TensorProto, bool]]:
    for node in nodes:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t, False
            for tensor in attribute.tensors:
                yield tensor, False
            if attribute.HasField("sparse_tensor"):
                yield attribute.sparse_tensor.values, False
                yield attribute.sparse_tensor.indices, False
            for sparse in attribute.sparse_tensors:
                yield sparse.values, False
                yield sparse.indices, False
            if attribute.type == AttributeProto.GRAPH:
                yield from _graph_tensors(attribute.g)
            for subgraph in attribute.graphs:
                yield from _graph_tensors(subgraph)


def all_tensors(model: ModelProto) -> Iterator[tuple[TensorProto, bool]]:
    yield from _graph_tensors(model.graph)
    for function in model.functions:
        yield from _node_tensors(function.node)


def uses_external_data(tensor: TensorProto) -> bool:
    return tensor.HasField("data_location") and tensor.data_location == TensorProto.EXTERNAL


def external_info(tensor: TensorProto) -> dict[str, str]:
    return {entry.key: entry.value for entry in tensor.external_data}


def set_external(tensor: TensorProto, location: str, offset: int, length: int) -> None:
    tensor.ClearField("raw_data")
    del tensor.external_data[:]
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value


def safe_location(base: Path, location: str, tensor: str, model: Path) -> Path:
    """The source file of an external tensor, refusing locations outside the model's folder."""
    relative = Path(location)
    if not location or relative.is_absolute() or ".." in relative.parts:
        raise ValueError(f"{model}: tensor {tensor} has external data location {location!r} outside the model's folder")
    return base / relative


# --- the rewrite ---------------------------------------------------------------------------

@dataclass
class _Source:
    tensor: TensorProto
    file: Path | None      # None: the bytes are inline in raw_data
    offset: int
    length: int


def _sources(model: ModelProto, src: Path) -> tuple[list[_Source], int]:
    sources: list[_Source] = []
    inline = 0
    sizes: dict[Path, int] = {}
    for tensor, may_move_out in all_tensors(model):
        if uses_external_data(tensor):
            info = external_info(tensor)
            path = safe_location(src.parent, info.get("location", ""), tensor.name, src)
            if path not in sizes:
                try:
                    sizes[path] = path.stat().st_size
                except FileNotFoundError:
                    raise ValueError(f"{src}: external data file {path.name} of tensor {tensor.name} is missing") from None
            offset = int(info.get("offset", 0) or 0)
            length = int(info["length"]) if info.get("length") not in (None, "") else sizes[path] - offset
            if offset < 0 or length < 0 or offset + length > sizes[path]:
                raise ValueError(f"{src}: tensor {tensor.name} reads bytes {offset}..{offset + length} of {path.name}, which has {sizes[path]}")
            if length == 0:
                # Nothing to store: an empty tensor is inline, which every runtime reads.
                del tensor.external_data[:]
                tensor.data_location = TensorProto.DEFAULT
                tensor.raw_data = b""
                inline += 1
                continue
            sources.append(_Source(tensor, path, offset, length))
        elif may_move_out and tensor.HasField("raw_data") and len(tensor.raw_data) >= INLINE_THRESHOLD:
            sources.append(_Source(tensor, None, 0, len(tensor.raw_data)))
        else:
            inline += 1
    return sources, inline


def _copy_range(source: IO[bytes], target: IO[bytes], offset: int, length: int) -> None:
    source.seek(offset)
    left = length
    while left:
        block = source.read(min(left, _COPY_BLOCK))
        if not block:
            raise ValueError(f"external data file {source.name} ended early")
        target.write(block)
        left -= len(block)


class TooManyChunks(ValueError):
    """The plan needs more chunks than the caller allows; raised before anything is written."""

    def __init__(self, name: str, count: int, limit: int) -> None:
        super().__init__(f"{name}: {count} chunks needed, at most {limit} allowed")
        self.count, self.limit = count, limit


def rechunk(src: Path, dst_dir: Path, shard_bytes: int, *, name: str | None = None, max_chunks: int | None = None) -> ChunkedModel:
    """Write `src` (an ONNX model, external data beside it) to `dst_dir/<name>` with chunked data.

    Returns what was written; raises TooManyChunks, writing nothing, when the plan needs more
    than `max_chunks`. The output may not overwrite `src` (its data is read while writing).
    """
    src = Path(src)
    name = name or src.name
    dst_dir.mkdir(parents=True, exist_ok=True)
    target = dst_dir / name
    if target.resolve() == src.resolve():
        raise ValueError(f"rechunk: {src} would be overwritten by its own output")
    model = onnx.load_model(str(src), load_external_data=False)
    sources, inline = _sources(model, src)
    plan = plan_chunks([(source.tensor.name, source.length) for source in sources], shard_bytes)
    if max_chunks is not None and len(plan.chunk_sizes) > max_chunks:
        raise TooManyChunks(name, len(plan.chunk_sizes), max_chunks)
    for tensor_name, length in plan.oversized:
        LOG.warning(
            "%s: tensor %s is %d bytes (%.3g MB), more than the shard size of %.3g MB; it gets a chunk of its own",
            name, tensor_name, length, length / MIB, shard_bytes / MIB,
        )
    chunk_paths = [dst_dir / chunk_name(name, index) for index in range(len(plan.chunk_sizes))]
    handles: dict[Path, IO[bytes]] = {}
    try:
        by_chunk: dict[int, list[tuple[_Source, Placement]]] = {}
        for source, placement in zip(sources, plan.placements, strict=True):
            by_chunk.setdefault(placement.chunk, []).append((source, placement))
        for index, path in enumerate(chunk_paths):
            with open(path, "wb") as out:
                for source, placement in by_chunk.get(index, []):
                    if out.tell() < placement.offset:
                        out.write(b"\0" * (placement.offset - out.tell()))
                    if source.file is None:
                        out.write(source.tensor.raw_data)
                    else:
                        if source.file not in handles:
                            handles[source.file] = open(source.file, "rb")
                        _copy_range(handles[source.file], out, source.offset, source.length)
                    set_external(source.tensor, path.name, placement.offset, placement.length)
                out.flush()
                os.fsync(out.fileno())
                if out.tell() != plan.chunk_sizes[index]:
                    raise AssertionError(f"chunk {path.name}: wrote {out.tell()} bytes, planned {plan.chunk_sizes[index]}")
    finally:
        for handle in handles.values():
            handle.close()
    # The graph alone is small: write the proto directly, so onnx's saver touches no data file.
    temporary = target.with_name(f".{target.name}.tmp")
    temporary.write_bytes(model.SerializeToString())
    os.replace(temporary, target)
    return ChunkedModel(
        model_file=target,
        chunks=tuple(chunk_paths),
        external_tensors=len(sources),
        inline_tensors=inline,
        data_bytes=sum(source.length for source in sources),
        oversized=tuple(plan.oversized),
    )


def check_chunks(model_file: Path) -> list[str]:
    """Problems with the external data of a model on disk: missing files, reads past the end, overlaps."""
    problems: list[str] = []
    model = onnx.load_model(str(model_file), load_external_data=False)
    ranges: dict[str, list[tuple[int, int, str]]] = {}
    for tensor, _ in all_tensors(model):
        if not uses_external_data(tensor):
            continue
        info = external_info(tensor)
        location = info.get("location", "")
        path = model_file.parent / location
        if "/" in location or "\\" in location or not path.is_file():
            problems.append(f"{model_file.name}: tensor {tensor.name} points at {location!r}, which is not a file beside the model")
            continue
        offset, length = int(info.get("offset", 0)), int(info.get("length", -1))
        if length < 0 or offset + length > path.stat().st_size:
            problems.append(f"{model_file.name}: tensor {tensor.name} reads past the end of {location}")
        ranges.setdefault(location, []).append((offset, offset + length, tensor.name))
    for location, spans in ranges.items():
        spans.sort()
        for (_, end, first), (start, _, second) in zip(spans, spans[1:], strict=False):
            if start < end:
                problems.append(f"{location}: tensors {first} and {second} overlap")
    return problems


def kv_cache_float16(model_file: Path) -> bool:
    """Whether the model's past key/value inputs are float16 (transformers.js `kv_cache_dtype`)."""
    model = onnx.load_model(str(model_file), load_external_data=False)
    past = [value for value in model.graph.input if value.name.startswith(("past_key_values", "past."))]
    return any(value.type.tensor_type.elem_type == TensorProto.FLOAT16 for value in past)
