"""Derive fp32, fp16, q8, q4, q4f16 and q2 from the fp32 graph, one tensor at a time.

The fp32 graph is a `Source`: its structure (a few hundred kilobytes) and a reader of each
initializer. For the builder's families that is the builder's graph in memory, each weight
converted from the memory-mapped checkpoint when it is read (jobs/onnx/builder_run.py); for
optimum's, the exported file with its external data memory-mapped. Every variant is written
by walking its initializers in order and computing each one's bytes from the source tensors
it depends on, then dropping them. No step holds a model's worth of weights: the peak is
the largest tensor and what it quantizes into, which is what lets a 7B model through on a
64 GiB node.

What each variant does to the graph (settings in `VariantSettings`, recorded in
quantize.json and models.json):

- weights: every MatMul whose B is a constant 2-D matrix becomes `MatMulNBits` (blockwise,
  symmetric, ORT's own packing routines: the same bytes `MatMulNBitsQuantizer` writes), the
  lm_head included; embedding tables read only by Gathers are stored as int8 with one
  scale per row and dequantized after the Gather (plain ONNX ops every runtime has).
  Tied embeddings (Qwen2.5, Gemma, GPT-2) are quantized as two tables, each for its own
  use: the lm_head as a 4-bit MatMulNBits, the lookup as int8 rows. One shared 4-bit table
  (GatherBlockQuantized over the lm_head's blocks, the builder's `shared_embeddings`) was
  measured on tiny:gpt2-a: 17% smaller q4 (169,808 against 204,877 bytes) for one position
  in 181 of top-1 agreement (0.945 against 0.950), but onnxruntime-web's WebAssembly has
  no GatherBlockQuantized kernel ("Could not find an implementation"), so browsers could
  not load it.
- float16: every float tensor, value and input/output becomes float16: the KV cache and
  logits included, as transformers.js and onnxruntime-genai expect of fp16 and q4f16
  models (transformers.js sizes its empty cache from the graph's own input types).
  Norms and attention run in ORT's kernels, which accumulate in float32 internally.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from jobs.onnx.external_data import ALIGN_THRESHOLD, ALIGNMENT, INLINE_THRESHOLD, align, chunk_name, external_info, safe_location, set_external, uses_external_data

MS_DOMAIN = "com.microsoft"
EMBEDDING_ROWS_PER_BLOCK = 4096


@dataclass(frozen=True)
class VariantSettings:
    """How one variant is made from fp32; the record that goes into quantize.json."""

    weight_bits: int | None          # None: float weights (fp32, fp16)
    float_type: str = "float32"      # activations, KV cache and unquantized weights
    block_size: int = 32             # MatMulNBits block along K
    symmetric: bool = True
    accuracy_level: int = 0          # MatMulNBits' compute type: 0 = the activations' own (no int8 activations)
    embeddings: str = "float"        # "float" or "int8-per-row"
    unquantized: tuple[str, ...] = ("norms", "biases", "rotary caches")

    def record(self) -> dict[str, object]:
        record = asdict(self)
        record["unquantized"] = list(self.unquantized)
        if self.weight_bits is None:
            for key in ("block_size", "symmetric", "accuracy_level"):
                record.pop(key)
        return record


VARIANTS: dict[str, VariantSettings] = {
    "fp32": VariantSettings(weight_bits=None),
    "fp16": VariantSettings(weight_bits=None, float_type="float16"),
    "q8": VariantSettings(weight_bits=8, embeddings="int8-per-row"),
    "q4": VariantSettings(weight_bits=4, embeddings="int8-per-row"),
    "q4f16": VariantSettings(weight_bits=4, float_type="float16", embeddings="int8-per-row"),
    "q2": VariantSettings(weight_bits=2, embeddings="int8-per-row"),
}

Producer = Callable[[], np.ndarray]


@dataclass(frozen=True)
class Source:
    """The fp32 graph every variant is derived from: its structure (a ModelProto whose
    initializers carry no bytes) and how to read one initializer's values.

    From a file (`from_file`: the external data memory-mapped) or from the builder's graph
    in memory (jobs/onnx/builder_run.py: each tensor converted from the loaded checkpoint
    when it is read), so that an fp32 graph only reaches the disk when fp32 is published.
    """

    model: onnx.ModelProto
    read: Callable[[TensorProto], np.ndarray]

    @classmethod
    def from_file(cls, model_path: Path) -> Source:
        def read(tensor: TensorProto) -> np.ndarray:
            if not uses_external_data(tensor):
                return numpy_helper.to_array(tensor)
            dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
            shape = tuple(tensor.dims)
            count = int(np.prod(shape)) if shape else 1
            if count == 0:
                return np.zeros(shape, dtype=dtype)
            info = external_info(tensor)
            location = safe_location(model_path.parent, info.get("location", ""), tensor.name, model_path)
            return np.memmap(location, dtype=dtype, mode="r", offset=int(info.get("offset", 0) or 0), shape=(count,)).reshape(shape)

        return cls(onnx.load(str(model_path), load_external_data=False), read)


class SourceTensors:
    """The fp32 graph's initializers, each read on demand, and tensors computed from them."""

    def __init__(self, graph: onnx.GraphProto, read: Callable[[TensorProto], np.ndarray]) -> None:
        self.tensors = {tensor.name: tensor for tensor in graph.initializer}
        self.read_stored = read
        self.derived: dict[str, Producer] = {}

    def define(self, name: str, data_type: int, dims: list[int], produce: Producer) -> None:
        """A tensor computed from others (a transposed weight), read like the graph's own."""
        self.tensors[name] = TensorProto(name=name, data_type=data_type, dims=dims)
        self.derived[name] = produce

    def read(self, name: str) -> np.ndarray:
        if name in self.derived:
            return self.derived[name]()
        return self.read_stored(self.tensors[name])


@dataclass
class _Planned:
    tensor: TensorProto       # the new initializer, without data
    produce: Producer


class VariantWriter:
    """The graph being rewritten and, for each initializer, how to compute its bytes."""

    def __init__(self, source: Source) -> None:
        self.model = onnx.ModelProto()
        self.model.CopyFrom(source.model)
        self.graph = self.model.graph
        self.source = SourceTensors(self.graph, source.read)
        self.planned: dict[str, _Planned] = {}
        for tensor in self.graph.initializer:
            self.replace(tensor.name, tensor.data_type, list(tensor.dims), lambda name=tensor.name: self.source.read(name))

    # --- edits -----------------------------------------------------------------------------
    def replace(self, name: str, data_type: int, dims: list[int], produce: Producer) -> None:
        """Give initializer `name` a new type and shape, its bytes computed by `produce`."""
        header = TensorProto(name=name, data_type=data_type, dims=dims)
        self.planned[name] = _Planned(header, produce)

    def add(self, name: str, data_type: int, dims: list[int], produce: Producer) -> str:
        """A new initializer, named `name` or, where the graph has that name already, `name_2`, ..."""
        name = self.unique(name)
        self.replace(name, data_type, dims, produce)
        return name

    def unique(self, name: str) -> str:
        taken = set(self.planned) | set(self.source.tensors) | {value for node in self.graph.node for value in node.output} | {i.name for i in self.graph.input}
        candidate, index = name, 1
        while candidate in taken:
            index += 1
            candidate = f"{name}_{index}"
        return candidate

    def drop_unused(self) -> None:
        used = {name for node in self.graph.node for name in node.input} | {output.name for output in self.graph.output}
        for name in [name for name in self.planned if name not in used]:
            del self.planned[name]

    # --- writing ---------------------------------------------------------------------------
    def write(self, target: Path, data_name: str) -> int:
        """Write `target` and its one external data file; return their total size."""
        self.drop_unused()
        target.parent.mkdir(parents=True, exist_ok=True)
        data_path = target.with_name(data_name)
        del self.graph.initializer[:]
        with open(data_path, "wb") as data:
            for planned in self.planned.values():
                array = np.ascontiguousarray(planned.produce())
                expected = onnx.helper.tensor_dtype_to_np_dtype(planned.tensor.data_type)
                if array.dtype != expected or list(array.shape) != list(planned.tensor.dims):
                    raise AssertionError(f"{planned.tensor.name}: produced {array.dtype}{list(array.shape)}, planned {expected}{list(planned.tensor.dims)}")
                tensor = self.graph.initializer.add()
                tensor.CopyFrom(planned.tensor)
                if array.nbytes < INLINE_THRESHOLD:
                    # Small constants stay in the graph, where shape inference can read them
                    # (a Reshape's shape must be inline); publish keeps them there too.
                    tensor.raw_data = array.tobytes()
                    continue
                offset = align(data.tell(), array.nbytes, ALIGN_THRESHOLD, ALIGNMENT)
                data.write(b"\0" * (offset - data.tell()))
                array.tofile(data)
                set_external(tensor, data_name, offset, array.nbytes)
                del array
        temporary = target.with_name(f".{target.name}.tmp")
        temporary.write_bytes(self.model.SerializeToString())
        os.replace(temporary, target)
        return target.stat().st_size + data_path.stat().st_size


# --- the transformations ---------------------------------------------------------------------

def expose_weight_products(writer: VariantWriter) -> None:
    """Give every weight product a MatMul, and every lookup a Gather, over a constant of its own.

    quantize_matmuls and quantize_embeddings convert a weight read by one node only. Tied
    embeddings hide that: optimum's graphs feed the lm_head MatMul `Transpose(embedding)`,
    the builder's feed the embedding Gather `Transpose(lm_head)`; either way the Transpose
    is replaced by the transposed matrix as an initializer of its own. And `Gemm` (GPT-2's
    Conv1D, a 2-D Linear) becomes MatMul + Add.
    """
    graph = writer.graph
    producers = {output: node for node in graph.node for output in node.output}
    nodes: list[onnx.NodeProto] = []
    transposed: dict[str, str] = {}
    for node in graph.node:
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (
            node.op_type == "Gemm" and node.input[1] in writer.source.tensors and attributes.get("alpha", 1.0) == 1.0
            and attributes.get("beta", 1.0) == 1.0 and not attributes.get("transA", 0)
        ):
            weight = node.input[1]
            if attributes.get("transB", 0):
                weight = _transposed(writer, weight, transposed)
            product = f"{node.output[0]}_matmul" if len(node.input) > 2 else node.output[0]
            nodes.append(helper.make_node("MatMul", [node.input[0], weight], [product], name=f"{node.name}_matmul"))
            if len(node.input) > 2:
                nodes.append(helper.make_node("Add", [product, node.input[2]], [node.output[0]], name=f"{node.name}_bias"))
            continue
        position = {"MatMul": 1, "Gather": 0}.get(node.op_type)
        if position is not None and node.input[position] in producers:
            transpose = producers[node.input[position]]
            perm = [list(a.ints) for a in transpose.attribute if a.name == "perm"]
            source = writer.source.tensors.get(transpose.input[0]) if transpose.op_type == "Transpose" else None
            if source is not None and len(source.dims) == 2 and perm in ([], [[1, 0]]):
                node.input[position] = _transposed(writer, source.name, transposed)
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    used = {name for node in graph.node for name in node.input} | {output.name for output in graph.output}
    dead = [node for node in graph.node if node.op_type == "Transpose" and not any(output in used for output in node.output)]
    for node in dead:
        graph.node.remove(node)
    writer.drop_unused()


def _transposed(writer: VariantWriter, name: str, done: dict[str, str]) -> str:
    if name not in done:
        rows, columns = (int(d) for d in writer.source.tensors[name].dims)
        source_type = writer.source.tensors[name].data_type
        copy = writer.add(f"{name}_transposed", source_type, [columns, rows], lambda: writer.source.read(copy))
        # A view: its reader copies what it needs (a block of rows, or the whole matrix to pack).
        writer.source.define(copy, source_type, [columns, rows], lambda: writer.source.read(name).T)
        done[name] = copy
    return done[name]


def quantize_matmuls(writer: VariantWriter, bits: int, block_size: int, float_type: int) -> int:
    """MatMul(A, constant B[K, N]) -> MatMulNBits; returns how many were converted."""
    from onnxruntime.capi._pybind_state import quantize_matmul_2bits, quantize_matmul_4bits, quantize_matmul_8bits

    quantize = {2: quantize_matmul_2bits, 4: quantize_matmul_4bits, 8: quantize_matmul_8bits}[bits]
    readers = _readers(writer.graph)
    converted = 0
    for node in writer.graph.node:
        if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx") or node.input[1] not in writer.source.tensors:
            continue
        weight = writer.source.tensors[node.input[1]]
        if len(weight.dims) != 2 or weight.data_type != TensorProto.FLOAT or len(readers[weight.name]) != 1:
            continue
        k, n = (int(d) for d in weight.dims)
        blocks = (k + block_size - 1) // block_size
        blob = block_size * bits // 8
        cache: dict[str, np.ndarray] = {}

        def packed(name: str = weight.name, k: int = k, n: int = n, blocks: int = blocks, blob: int = blob, cache: dict = cache) -> np.ndarray:
            matrix = np.asarray(writer.source.read(name), dtype=np.float32)
            if k % block_size:
                matrix = np.pad(matrix, ((0, blocks * block_size - k), (0, 0)))
            out = np.zeros((n, blocks, blob), dtype=np.uint8)
            scales = np.zeros((n, blocks), dtype=np.float32)
            zero_points = np.zeros((n, (blocks + 8 // bits - 1) // (8 // bits)), dtype=np.uint8)
            quantize(out, np.ascontiguousarray(matrix), scales, zero_points, block_size, n, k, True)
            cache["scales"] = scales
            return out

        def scales(cache: dict = cache, packed: Producer = packed) -> np.ndarray:
            if "scales" not in cache:
                packed()
            values = cache.pop("scales")
            return values.astype(onnx.helper.tensor_dtype_to_np_dtype(float_type))

        packed_name = writer.add(f"{weight.name}_Q{bits}", TensorProto.UINT8, [n, blocks, blob], packed)
        scales_name = writer.add(f"{weight.name}_scales", float_type, [n, blocks], scales)
        node.op_type, node.domain = "MatMulNBits", MS_DOMAIN
        node.input[1] = packed_name
        node.input.append(scales_name)
        del node.attribute[:]
        node.attribute.extend([helper.make_attribute(key, value) for key, value in (("K", k), ("N", n), ("bits", bits), ("block_size", block_size))])
        converted += 1
    writer.drop_unused()
    return converted


def quantize_embeddings(writer: VariantWriter, float_type: int) -> int:
    """Gather(table[V, H], ids) -> Gather(int8 table) * Gather(row scales); returns tables converted."""
    readers = _readers(writer.graph)
    converted: dict[str, tuple[str, str]] = {}
    nodes: list[onnx.NodeProto] = []
    for node in writer.graph.node:
        table = writer.source.tensors.get(node.input[0]) if node.op_type == "Gather" and len(node.input) == 2 else None
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        if (
            table is None or table.data_type != TensorProto.FLOAT or len(table.dims) != 2 or axis != 0
            or any(reader.op_type != "Gather" or reader.input[0] != table.name for reader in readers[table.name])
        ):
            nodes.append(node)
            continue
        if table.name not in converted:
            rows, columns = (int(d) for d in table.dims)
            cache: dict[str, np.ndarray] = {}

            def values(name: str = table.name, rows: int = rows, cache: dict = cache) -> np.ndarray:
                # A block of rows at a time: the table is the largest tensor of most models,
                # and a whole-table expression would hold four float copies of it.
                matrix = writer.source.read(name)
                quantized = np.empty(matrix.shape, dtype=np.int8)
                scales = np.empty((rows, 1), dtype=np.float32)
                for first in range(0, rows, EMBEDDING_ROWS_PER_BLOCK):
                    block = np.asarray(matrix[first:first + EMBEDDING_ROWS_PER_BLOCK], dtype=np.float32)
                    peak = np.abs(block).max(axis=1, keepdims=True)
                    scales[first:first + len(block)] = np.where(peak > 0, peak / 127.0, 1.0)
                    quantized[first:first + len(block)] = np.clip(np.rint(block / scales[first:first + len(block)]), -127, 127)
                cache["scales"] = scales
                return quantized

            def scales(cache: dict = cache, values: Producer = values) -> np.ndarray:
                if "scales" not in cache:
                    values()
                return cache.pop("scales").astype(onnx.helper.tensor_dtype_to_np_dtype(float_type))

            converted[table.name] = (
                writer.add(f"{table.name}_int8", TensorProto.INT8, [rows, columns], values),
                writer.add(f"{table.name}_scales", float_type, [rows, 1], scales),
            )
        quantized, row_scales = converted[table.name]
        prefix, ids, output = node.name or f"{table.name}_gather", node.input[1], node.output[0]
        nodes += [
            helper.make_node("Gather", [quantized, ids], [f"{output}_int8"], name=f"{prefix}_int8", axis=0),
            helper.make_node("Cast", [f"{output}_int8"], [f"{output}_dequantized"], name=f"{prefix}_cast", to=float_type),
            helper.make_node("Gather", [row_scales, ids], [f"{output}_scale"], name=f"{prefix}_scale", axis=0),
            helper.make_node("Mul", [f"{output}_dequantized", f"{output}_scale"], [output], name=f"{prefix}_dequantize"),
        ]
    if converted:
        del writer.graph.node[:]
        writer.graph.node.extend(nodes)
        writer.drop_unused()
    return len(converted)


def to_float16(writer: VariantWriter) -> None:
    """Every float32 tensor, value, input, output and constant of the graph becomes float16."""
    for name, planned in writer.planned.items():
        if planned.tensor.data_type == TensorProto.FLOAT:
            produce = planned.produce
            writer.replace(name, TensorProto.FLOAT16, list(planned.tensor.dims), lambda produce=produce: produce().astype(np.float16))
    graph = writer.graph
    for value in [*graph.input, *graph.output, *graph.value_info]:
        if value.type.tensor_type.elem_type == TensorProto.FLOAT:
            value.type.tensor_type.elem_type = TensorProto.FLOAT16
    for node in graph.node:
        for attribute in node.attribute:
            if node.op_type == "Cast" and attribute.name == "to" and attribute.i == TensorProto.FLOAT:
                attribute.i = TensorProto.FLOAT16
            elif attribute.type == onnx.AttributeProto.TENSOR and attribute.t.data_type == TensorProto.FLOAT:
                attribute.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attribute.t).astype(np.float16), attribute.t.name))


def _readers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in set(node.input):
            readers.setdefault(name, []).append(node)
    return readers


def derive(source: Source, target: Path, data_name: str, variant: str) -> dict[str, object]:
    """Write variant `variant` of the fp32 graph `source` as `target` plus `data_name` beside it."""
    settings = VARIANTS[variant]
    float_type = TensorProto.FLOAT16 if settings.float_type == "float16" else TensorProto.FLOAT
    writer = VariantWriter(source)
    counts = {}
    if settings.weight_bits is not None:
        expose_weight_products(writer)
        counts["matmuls_quantized"] = quantize_matmuls(writer, settings.weight_bits, settings.block_size, float_type)
        if settings.embeddings == "int8-per-row":
            counts["embedding_tables_quantized"] = quantize_embeddings(writer, float_type)
    if float_type == TensorProto.FLOAT16:
        to_float16(writer)
    if any(node.domain == MS_DOMAIN for node in writer.graph.node) and not any(o.domain == MS_DOMAIN for o in writer.model.opset_import):
        writer.model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    size = writer.write(target, data_name)
    return {"settings": settings.record(), **counts, "size_bytes": size}


def derive_variants(source: Source, folder: Path, variants: list[str]) -> dict[str, dict[str, object]]:
    """Each of `variants` written into `folder` under its published name, in foundry.variants'
    order (fp32 first), one after another: each gives back what it held before the next starts."""
    from foundry.variants import VARIANT_FILES
    from jobs.steps import give_back_freed_memory

    made = {}
    for variant in [level for level in VARIANT_FILES if level in variants]:
        name = VARIANT_FILES[variant]
        made[variant] = derive(source, folder / name, chunk_name(name, 0), variant)
        give_back_freed_memory()
        if variant == "fp32":
            # The rest from the fp32 variant's file, its tensors read as they lie there: the
            # builder's graph in memory converts and transposes each weight again for every
            # variant read from it (0.5B, six variants: 52.7 s against 45.0 s from the file).
            source = Source.from_file(folder / name)
    return made


def weight_bytes(source: Source) -> int:
    """The fp32 graph's initializers' bytes (what the agreement check's slices are sized from)."""
    from jobs.onnx.slices import initializer_bytes

    return sum(map(initializer_bytes, source.model.graph.initializer))
