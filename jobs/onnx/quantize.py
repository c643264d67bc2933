"""Derive the fp16, q8, q4 and q2 variants from the fp32 export, and save any variant in
the layout the publish stage expects.

One job: graph in, graph out. Every function reads the fp32 model from its path (so the
two-gigabyte protobuf limit never applies: converters that need shape inference run it
on files) and returns an `onnx.ModelProto` that `save_model` writes as `<file>` plus one
`<file>_data` holding every initializer, nodes topologically sorted.

- fp16: ONNX Runtime's float16 converter with `keep_io_types=True`, as transformers.js
  community exports do: weights and compute are float16, but `input_ids`/masks stay int64
  and the `past_key_values.*` inputs, `present.*` outputs and `logits` stay float32, so a
  client feeds the same float32 cache to every variant (transformers.js's default
  `kv_cache_dtype`) and needs no `transformers.js_config` in config.json. The rotary
  embedding and the norms stay float32 (`FP32_SCOPES`).
- q8: dynamic int8 (`quantize_dynamic`): MatMul weights with a constant B, signed int8,
  per output channel; activations are quantized at run time (uint8, as ORT requires).
  This is what transformers.js's own conversion script picks for models without Conv.
- q4 / q2: `MatMulNBits` weight-only blocks of 32, symmetric, from `MatMulNBitsQuantizer`.
  q2 only where the running ONNX Runtime executes a 2-bit `MatMulNBits` (`q2_supported`).
  That is this machine's ONNX Runtime: browsers run the onnxruntime-web that their
  transformers.js bundles (1.22 in transformers.js 3.8, which only runs 4-bit).
- q8, q4 and q2 alike: Gemm becomes MatMul, a tied lm_head gets its own weight so it is
  quantized too, and embedding tables become int8 with a scale per row
  (`prepare_for_weight_quantization`, `quantize_embeddings`), so that the size order
  fp32 > fp16 > q8 > q4 > q2 holds for small models with large vocabularies as well.
"""

import contextlib
import functools
import logging
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

BLOCK_SIZE = 32
LOG = logging.getLogger("foundry.quantize")


def data_file_name(onnx_name: str) -> str:
    return f"{onnx_name}_data"


def load(path: Path) -> onnx.ModelProto:
    return onnx.load(str(path), load_external_data=True)


def save_model(model: onnx.ModelProto, path: Path) -> int:
    """Write `path` and `path_data` (every initializer, in graph order); return their total size.

    The proto is consumed: onnx moves the tensors' bytes out of it while writing.
    Stale files are removed first, because onnx appends to an existing data file.
    """
    data = path.with_name(data_file_name(path.name))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    data.unlink(missing_ok=True)
    _initializers_as_raw_data(model.graph)
    topological_sort(model.graph)
    onnx.save_model(
        model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
        location=data.name, size_threshold=0, convert_attribute=False,
    )
    if not data.exists():  # a graph without initializers: keep the layout uniform
        data.write_bytes(b"")
    return path.stat().st_size + data.stat().st_size


def _initializers_as_raw_data(graph: onnx.GraphProto) -> None:
    """onnx only moves `raw_data` tensors out of the graph; rewrite the few typed-field ones."""
    for index, tensor in enumerate(graph.initializer):
        if not tensor.HasField("raw_data") and tensor.data_location != onnx.TensorProto.EXTERNAL:
            graph.initializer[index].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor), tensor.name))
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                _initializers_as_raw_data(attribute.g)
            elif attribute.type == onnx.AttributeProto.GRAPHS:
                for subgraph in attribute.graphs:
                    _initializers_as_raw_data(subgraph)


# Node scopes the fp16 variant keeps in float32 (torch's exporter names each node after its
# module path, e.g. `/model/layers.0/input_layernorm/Pow`):
# - the rotary embedding: `position * inv_freq` in float16 is off by 0.03 rad at position
#   60 and by 0.5 rad at 1000, which garbles every long prompt;
# - RMSNorm / LayerNorm: the model casts to float32 there on purpose; in float16 the sum of
#   squares overflows (inf) as soon as a hidden state passes 256, which the outlier
#   channels of real LLMs do.
# The converter puts Casts around them; their weights are a few kilobytes.
FP32_SCOPES = re.compile(r"/(?:[^/]*rotary[^/]*|[^/]*norm[^/]*|ln|ln_[^/]+)/", re.IGNORECASE)


def fp16_blocked_nodes(model: onnx.ModelProto) -> list[str]:
    return [node.name for node in model.graph.node if node.name and FP32_SCOPES.search(node.name)]


def topological_sort(graph: onnx.GraphProto) -> None:
    """Order the nodes so each comes after its inputs' producers, keeping the order otherwise.

    The float16 converter appends the Casts of graph inputs at the end; ONNX Runtime copes,
    but the ONNX checker and other runtimes require sorted graphs.
    """
    import heapq

    nodes = list(graph.node)
    producer = {output: index for index, node in enumerate(nodes) for output in node.output if output}
    waiting_on: list[set[int]] = []
    dependents: dict[int, list[int]] = {}
    for index, node in enumerate(nodes):
        needs = {producer[name] for name in _node_inputs(node) if name in producer and producer[name] != index}
        waiting_on.append(needs)
        for other in needs:
            dependents.setdefault(other, []).append(index)
    ready = [index for index, needs in enumerate(waiting_on) if not needs]
    heapq.heapify(ready)
    order = []
    while ready:
        index = heapq.heappop(ready)
        order.append(index)
        for child in dependents.get(index, []):
            waiting_on[child].discard(index)
            if not waiting_on[child]:
                heapq.heappush(ready, child)
    if len(order) != len(nodes):
        raise RuntimeError("the graph has a cycle; cannot sort it")
    if order != list(range(len(nodes))):
        del graph.node[:]
        graph.node.extend(nodes[index] for index in order)


def _node_inputs(node: onnx.NodeProto) -> set[str]:
    """A node's inputs, with the outer-scope names its subgraphs read."""
    names = set(node.input)
    for attribute in node.attribute:
        subgraphs = [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else list(attribute.graphs)
        for subgraph in subgraphs:
            inner = {output for sub in subgraph.node for output in sub.output} | {i.name for i in subgraph.input} | {t.name for t in subgraph.initializer}
            names |= {name for sub in subgraph.node for name in _node_inputs(sub)} - inner
    names.discard("")
    return names


def to_fp16(fp32_path: Path) -> onnx.ModelProto:
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    blocked = fp16_blocked_nodes(onnx.load(str(fp32_path), load_external_data=False))
    # A path (not a proto) makes the converter run shape inference on files, which works
    # past 2 GB; its temporary file goes next to the model, in the stage's work folder.
    model = convert_float_to_float16(str(fp32_path), keep_io_types=True, op_block_list=DEFAULT_OP_BLOCK_LIST, node_block_list=blocked)
    return _drop_float16_round_trips(model, set(blocked))


def _drop_float16_round_trips(model: onnx.ModelProto, blocked: set[str]) -> onnx.ModelProto:
    """Let float32 flow straight between the blocked nodes.

    The converter wraps every blocked node on its own: its float32 outputs are cast to
    float16 and cast back to float32 for the next blocked node, which would round the
    rotary angles to float16 after all, and it names the two Casts of a tensor that one
    node reads twice alike (an invalid graph). Consumers of such a float16 -> float32 Cast
    read the float32 original instead, and the Casts no one reads any more are dropped.
    """
    graph = model.graph
    producers = {output: node for node in graph.node for output in node.output}
    float_inputs = {i.name for i in graph.input if i.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}

    def cast_to(node: onnx.NodeProto) -> int | None:
        return next((a.i for a in node.attribute if a.name == "to"), None) if node.op_type == "Cast" else None

    replace: dict[str, str] = {}
    for node in graph.node:
        if cast_to(node) != onnx.TensorProto.FLOAT:
            continue
        down = producers.get(node.input[0])
        if down is None or cast_to(down) != onnx.TensorProto.FLOAT16:
            continue
        origin = down.input[0]
        origin_node = producers.get(origin)
        if (origin_node is not None and origin_node.name in blocked) or origin in float_inputs:
            replace[node.output[0]] = origin
    for node in graph.node:
        for index, name in enumerate(node.input):
            if name in replace:
                node.input[index] = replace[name]
    # Drop dead Casts (repeatedly: a dropped float32 Cast can leave its float16 Cast dead).
    while True:
        used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
        dead = [node for node in graph.node if node.op_type == "Cast" and not any(out in used for out in node.output)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    produced = {output for node in graph.node for output in node.output}
    kept = [info for info in graph.value_info if info.name in produced]
    del graph.value_info[:]
    graph.value_info.extend(kept)
    return model


def prepare_for_weight_quantization(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give every weight product a MatMul with a constant B, which both quantizers need.

    - `Gemm` (GPT-2's Conv1D, 2-D Linear) becomes MatMul + Add, as `quantize_dynamic` does
      on its own but `MatMulNBitsQuantizer` does not (GPT-2 q4 would stay float32).
    - A MatMul whose B is `Transpose(initializer)` (optimum's tied lm_head: it reuses the
      embedding through a Transpose) gets the transposed weight as its own initializer, so
      the lm_head is quantized too. The embedding Gather keeps the float32 original; ONNX
      Runtime folds that Transpose into a second float32 copy at load time anyway.
    """
    from onnxruntime.quantization.onnx_model import ONNXModel

    ONNXModel(model).replace_gemm_with_matmul()
    graph = model.graph
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    producers = {output: node for node in graph.node for output in node.output}
    untied: dict[str, str] = {}
    for node in graph.node:
        if node.op_type != "MatMul" or len(node.input) < 2 or node.input[1] not in producers:
            continue
        transpose = producers[node.input[1]]
        source = initializers.get(transpose.input[0]) if transpose.op_type == "Transpose" else None
        perm = [list(a.ints) for a in transpose.attribute if a.name == "perm"]
        if source is None or len(source.dims) != 2 or perm not in ([], [[1, 0]]):
            continue
        if transpose.output[0] not in untied:
            name = _unique_name(f"{source.name}_transposed_weight", initializers)
            tensor = numpy_helper.from_array(np.ascontiguousarray(numpy_helper.to_array(source).T), name)
            graph.initializer.append(tensor)
            initializers[name] = tensor
            untied[transpose.output[0]] = name
        node.input[1] = untied[transpose.output[0]]
    if untied:
        used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
        dead = [node for node in graph.node if node.op_type == "Transpose" and node.output[0] in untied and node.output[0] not in used]
        for node in dead:
            graph.node.remove(node)
    return model


def quantize_embeddings(model: onnx.ModelProto) -> onnx.ModelProto:
    """Store each embedding table as int8 with one scale per row (symmetric).

    `Gather(table, ids)` becomes `Cast(Gather(table_int8, ids)) * Gather(scales, ids)`:
    plain ONNX ops every runtime has. Neither ORT quantizer does this well: MatMulNBits
    leaves embeddings float32 (in a small model with a large vocabulary, a q4 file would
    then be larger than q8) and `quantize_dynamic` uses one scale for the whole table.
    Only tables that nothing but Gathers read are converted (a tied lm_head has its own
    copy by then, see `prepare_for_weight_quantization`).
    """
    graph = model.graph
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in set(node.input):
            readers.setdefault(name, []).append(node)
    graph_outputs = {o.name for o in graph.output}
    converted: dict[str, tuple[str, str]] = {}
    new_nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        table = initializers.get(node.input[0]) if node.op_type == "Gather" and len(node.input) == 2 else None
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        if (
            table is None or table.data_type != onnx.TensorProto.FLOAT or len(table.dims) != 2 or axis != 0
            or node.input[1] in initializers or any(r.op_type != "Gather" or r.input[0] != table.name for r in readers[table.name])
            or table.name in graph_outputs
        ):
            new_nodes.append(node)
            continue
        if table.name not in converted:
            weights = numpy_helper.to_array(table).astype(np.float32)
            peak = np.abs(weights).max(axis=1, keepdims=True)
            scales = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
            quantized = np.clip(np.rint(weights / scales), -127, 127).astype(np.int8)
            names = (_unique_name(f"{table.name}_int8", initializers), _unique_name(f"{table.name}_scales", initializers))
            for name, array in zip(names, (quantized, scales), strict=True):
                initializers[name] = numpy_helper.from_array(array, name)
                graph.initializer.append(initializers[name])
            converted[table.name] = names
        quantized_name, scales_name = converted[table.name]
        prefix, ids, output = node.name or f"{table.name}_gather", node.input[1], node.output[0]
        new_nodes += [
            onnx.helper.make_node("Gather", [quantized_name, ids], [f"{output}_int8"], name=f"{prefix}_int8", axis=0),
            onnx.helper.make_node("Cast", [f"{output}_int8"], [f"{output}_dequantized"], name=f"{prefix}_cast", to=onnx.TensorProto.FLOAT),
            onnx.helper.make_node("Gather", [scales_name, ids], [f"{output}_scale"], name=f"{prefix}_scale", axis=0),
            onnx.helper.make_node("Mul", [f"{output}_dequantized", f"{output}_scale"], [output], name=f"{prefix}_dequantize"),
        ]
    if converted:
        del graph.node[:]
        graph.node.extend(new_nodes)
        kept = [tensor for tensor in graph.initializer if tensor.name not in converted]
        del graph.initializer[:]
        graph.initializer.extend(kept)
    return model


def _unique_name(name: str, taken: dict[str, object]) -> str:
    candidate, index = name, 1
    while candidate in taken:
        index += 1
        candidate = f"{name}_{index}"
    return candidate


def to_q8(fp32_path: Path) -> onnx.ModelProto:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="q8-", dir=fp32_path.parent) as folder:
        source = Path(folder) / "prepared.onnx"
        save_model(quantize_embeddings(prepare_for_weight_quantization(load(fp32_path))), source)
        target = Path(folder) / "model.onnx"
        with quiet_quantizers():
            quantize_dynamic(
                source, target, op_types_to_quantize=["MatMul"], per_channel=True, reduce_range=False,
                weight_type=QuantType.QInt8, use_external_data_format=True, extra_options={"MatMulConstBOnly": True},
            )
        return load(target)


def to_nbits(fp32_path: Path, bits: int) -> onnx.ModelProto:
    nbits = _import_nbits_quantizer()
    config = nbits.DefaultWeightOnlyQuantConfig(block_size=BLOCK_SIZE, is_symmetric=True, bits=bits)
    quantizer = nbits.MatMulNBitsQuantizer(quantize_embeddings(prepare_for_weight_quantization(load(fp32_path))), algo_config=config)
    with quiet_quantizers():
        quantizer.process()
    return quantizer.model.model


def _import_nbits_quantizer() -> Any:
    """Import ORT's MatMulNBits module without its side effect on the process's logging.

    `onnxruntime.quantization.matmul_nbits_quantizer` calls `logging.basicConfig(level=INFO)`
    when imported, which turns on every library's INFO messages in a process that had not
    configured logging yet. Undo exactly that.
    """
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    from onnxruntime.quantization import matmul_nbits_quantizer

    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    return matmul_nbits_quantizer


@contextlib.contextmanager
def quiet_quantizers() -> Iterator[None]:
    """Drop ORT quantizers' per-node INFO lines (one per graph node: thousands for an LLM),
    and `quantize_dynamic`'s advice to pre-process, which would apply ORT-only fusions."""
    nbits_logger = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
    saved = nbits_logger.level
    nbits_logger.setLevel(logging.WARNING)
    quiet = _QuietOrtRoot()
    logging.getLogger().addFilter(quiet)
    try:
        yield
    finally:
        logging.getLogger().removeFilter(quiet)
        nbits_logger.setLevel(saved)


class _QuietOrtRoot(logging.Filter):
    """For the root logger, where `quantize_dynamic` logs with bare `logging.info(...)`."""

    def filter(self, record: logging.LogRecord) -> bool:
        from_ort = "onnxruntime" in record.pathname.replace("\\", "/").split("/")
        if not from_ort:
            return True
        return record.levelno >= logging.WARNING and not record.getMessage().startswith("Please consider to run pre-processing")


@functools.cache
def q2_supported() -> bool:
    """Whether this ONNX Runtime runs a 2-bit MatMulNBits on CPU and gets it right.

    Builds one MatMulNBits node (bits=2, blocks of 32, symmetric, weights packed by the
    very quantizer q2 uses), runs it on a [1, 3, K] input and compares it with the
    dequantized weights multiplied in numpy. Answered once per process.
    """
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper
        nbits = _import_nbits_quantizer()

        bits, k, n = 2, 2 * BLOCK_SIZE, 8
        rng = np.random.default_rng(0)
        weight = rng.standard_normal((k, n)).astype(np.float32)
        quantizer = nbits.DefaultWeightOnlyQuantizer(nbits.DefaultWeightOnlyQuantConfig(block_size=BLOCK_SIZE, is_symmetric=True, bits=bits))
        packed, scales, _ = quantizer.qbits_block_quant(weight)
        node = helper.make_node("MatMulNBits", ["A", "B", "S"], ["Y"], domain="com.microsoft", K=k, N=n, bits=bits, block_size=BLOCK_SIZE)
        graph = helper.make_graph(
            [node], "q2_probe",
            [helper.make_tensor_value_info("A", TensorProto.FLOAT, [1, 3, k])],
            [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 3, n])],
            [numpy_helper.from_array(packed, "B"), numpy_helper.from_array(scales, "S")],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)])
        model.ir_version = 8
        options = ort.SessionOptions()
        options.log_severity_level = 4
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        a = rng.standard_normal((1, 3, k)).astype(np.float32)
        got = session.run(None, {"A": a})[0]
        expected = a @ _dequantize(packed, scales, bits, k)
        return bool(np.isfinite(got).all() and np.allclose(got, expected, rtol=1e-3, atol=1e-3))
    except Exception as error:  # noqa: BLE001 - any failure means "cannot run it"
        LOG.info("2-bit MatMulNBits probe failed: %s: %s", type(error).__name__, error)
        return False


def _dequantize(packed: np.ndarray, scales: np.ndarray, bits: int, k: int) -> np.ndarray:
    """[N, blocks, blob] packed symmetric weights (low bits first) back to a float [K, N]."""
    per_byte = 8 // bits
    shifts = (np.arange(per_byte) * bits).astype(np.uint8)
    values = (packed[..., None] >> shifts) & ((1 << bits) - 1)  # [N, blocks, blob, per_byte]
    values = values.reshape(packed.shape[0], packed.shape[1], -1).astype(np.float32) - (1 << (bits - 1))
    weight = values * scales[:, :, None]  # [N, blocks, block]
    return weight.reshape(packed.shape[0], -1)[:, :k].T
