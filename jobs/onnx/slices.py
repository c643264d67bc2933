"""Run a decoder graph's forward one slice of its nodes at a time, so that a check holds a
slice's weights, not the model's.

ONNX Runtime memory-maps a graph's external data, and a forward touches every page of it:
a session over the whole fp32 graph of a 1.5B model holds 7.2 GB, more than twice the
model's fp16 bytes. Cut into runs of consecutive nodes whose weights stay under a budget
(with the nodes that compute from constants alone going along with each run that reads
them), each slice gets a session of its own that is closed before the next one opens; the
activations crossing a cut (hidden states, residuals, the attention's sequence lengths,
the inputs later layers read) are all that is kept in between. The nodes, weights and kernels are the
graph's own, so the logits are the ones a whole-graph session gives.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto

from jobs.onnx.decoder import session_options

# ONNX Runtime's names of the tensor types decoder graphs use (`NodeArg.type`).
_ORT_TYPES = {
    TensorProto.FLOAT: "tensor(float)", TensorProto.FLOAT16: "tensor(float16)", TensorProto.BFLOAT16: "tensor(bfloat16)",
    TensorProto.DOUBLE: "tensor(double)", TensorProto.INT64: "tensor(int64)", TensorProto.INT32: "tensor(int32)",
    TensorProto.INT8: "tensor(int8)", TensorProto.UINT8: "tensor(uint8)", TensorProto.BOOL: "tensor(bool)",
}
_ONNX_TYPES = {name: elem_type for elem_type, name in _ORT_TYPES.items()}


@dataclass(frozen=True)
class GraphInput:
    """A graph input as ONNX Runtime's `session.get_inputs()` describes it."""

    name: str
    shape: list[int | str | None]
    type: str


def initializer_bytes(tensor: TensorProto) -> int:
    """Its size from its shape and type, wherever its bytes are (inline or external)."""
    return int(np.prod(tensor.dims, dtype=np.int64)) * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize


def held_bytes(tensor: TensorProto) -> int:
    """What a CPU session holds for an initializer: its mapped bytes, and for float16 the
    float32 copy ONNX Runtime makes at load for the kernels it runs in float32 (measured:
    a slice of 0.46 GB of float16 weights took 1.1 GiB)."""
    size = initializer_bytes(tensor)
    return 3 * size if tensor.data_type == TensorProto.FLOAT16 else size


def plan_slices(graph: onnx.GraphProto, weight_budget: int | None) -> list[list[int]]:
    """The graph's nodes (indices, in graph order) cut into slices each holding at most
    `weight_budget` bytes of initializers (`held_bytes`), or one node's where a single node
    reads more.

    The nodes that compute from constants alone (a Transpose of a tied embedding table, a
    Constant) go with every slice that reads what they make: what crosses a cut is then
    only activations, never a weight-sized tensor computed once per batch. One slice when
    there is no budget, or when a node holds a subgraph (If, Loop) that may read names
    across a cut.
    """
    everything = [list(range(len(graph.node)))]
    if weight_budget is None or any(attribute.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for node in graph.node for attribute in node.attribute):
        return everything
    sizes = {tensor.name: held_bytes(tensor) for tensor in graph.initializer}
    constant = _constant_nodes(graph, set(sizes))
    producer = {name: index for index in constant for name in graph.node[index].output}
    slices: list[set[int]] = []
    current: set[int] = set()
    held, read = 0, set()
    for index in range(len(graph.node)):
        if index in constant:
            continue
        needed = _with_constant_inputs(graph, index, producer)
        weights = {name for position in needed for name in graph.node[position].input if name in sizes}
        added = sum(sizes[name] for name in weights - read)
        if held and held + added > weight_budget:
            slices.append(current)
            current, held, read = set(), 0, set()
            added = sum(sizes[name] for name in weights)
        current |= needed
        held += added
        read |= weights
    slices.append(current)
    return [sorted(nodes) for nodes in slices if nodes] or everything


def _constant_nodes(graph: onnx.GraphProto, initializers: set[str]) -> set[int]:
    """The nodes whose every input is an initializer or another such node's output."""
    constant: set[int] = set()
    computed = set(initializers)
    for index, node in enumerate(graph.node):
        if all(not name or name in computed for name in node.input):
            constant.add(index)
            computed.update(node.output)
    return constant


def _with_constant_inputs(graph: onnx.GraphProto, index: int, producer: dict[str, int]) -> set[int]:
    """Node `index` and the constant nodes its inputs come from, transitively."""
    needed, pending = {index}, [index]
    while pending:
        for name in graph.node[pending.pop()].input:
            source = producer.get(name)
            if source is not None and source not in needed:
                needed.add(source)
                pending.append(source)
    return needed


def prepacking_pays(graph: onnx.GraphProto) -> bool:
    """Whether a slice's session should prepack its weights: yes where no MatMul or Gemm
    reads a float weight. 4-bit MatMulNBits runs from its prepacked layout and dequantizes
    the whole weight on every run without it (measured at 0.5B, q4's check: 3.1 s and
    1.16 GiB lean, 0.7 s and 0.69 GiB prepacked); a float MatMul's prepacking copies its
    weight, doubling what the slice holds."""
    floats = {tensor.name for tensor in graph.initializer if tensor.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16)}
    return not any(node.op_type in ("MatMul", "Gemm") and any(name in floats for name in node.input) for node in graph.node)


class SlicedDecoder:
    """A decoder graph run slice by slice over one batch of feeds.

    It answers `get_inputs()` as an ONNX Runtime session does, so that the feeds are built
    exactly as for a session (jobs/onnx/decoder.py)."""

    def __init__(self, path: Path, weight_budget: int | None = None) -> None:
        self.path = path
        self.model = onnx.load(str(path), load_external_data=False)
        self.slices = plan_slices(self.model.graph, weight_budget)

    def get_inputs(self) -> list[GraphInput]:
        return [
            GraphInput(value.name, [dim.dim_value if dim.HasField("dim_value") else (dim.dim_param or None) for dim in value.type.tensor_type.shape.dim], _ORT_TYPES[value.type.tensor_type.elem_type])
            for value in self.model.graph.input
        ]

    def run(self, output: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """The `output` tensor for one batch of feeds."""
        import onnxruntime as ort

        values = dict(feeds)
        types = {value.name: value.type.tensor_type.elem_type for value in self.model.graph.input}
        for piece, inputs, outputs, kept in self._pieces(output, types):
            options = session_options(lean=True, prepack_weights=prepacking_pays(piece.graph))
            options.add_session_config_entry("session.model_external_initializers_file_folder_path", str(self.path.parent))
            session = ort.InferenceSession(piece.SerializeToString(), options, providers=["CPUExecutionProvider"])
            types.update({arg.name: _ONNX_TYPES[arg.type] for arg in session.get_outputs()})
            values.update(zip(outputs, session.run(outputs, {name: values[name] for name in inputs}), strict=True))
            for name in [name for name in values if name not in kept]:
                del values[name]
            del session
        return values[output]

    def _pieces(self, output: str, types: dict[str, int]) -> Iterator[tuple[onnx.ModelProto, list[str], list[str], set[str]]]:
        """Each slice as a model of its own: its nodes, the initializers they read (still
        pointing at the external data files) and, as inputs and outputs, the tensors that
        cross its cuts; with the names still needed after it. Yielded one at a time: a
        slice's input types are known once the slices before it have run."""
        graph = self.model.graph
        initializers = {tensor.name: tensor for tensor in graph.initializer}
        pieces = [[graph.node[index] for index in indices] for indices in self.slices]
        # What each slice takes from outside itself (a constant it recomputes is not taken).
        taken = []
        for nodes in pieces:
            produced = {name for node in nodes for name in node.output if name}
            read = list(dict.fromkeys(name for node in nodes for name in node.input if name))
            taken.append([name for name in read if name not in produced and name not in initializers])
        for number, nodes in enumerate(pieces):
            read = list(dict.fromkeys(name for node in nodes for name in node.input if name))
            later = {name for inputs in taken[number + 1:] for name in inputs} | {output}
            outputs = [name for node in nodes for name in node.output if name in later]
            piece = onnx.helper.make_model(
                onnx.helper.make_graph(
                    nodes, f"{graph.name}_slice_{number}",
                    [onnx.helper.make_tensor_value_info(name, types[name], None) for name in taken[number]],
                    [onnx.ValueInfoProto(name=name) for name in outputs],
                    [initializers[name] for name in read if name in initializers],
                ),
                opset_imports=self.model.opset_import, ir_version=self.model.ir_version,
            )
            yield piece, taken[number], outputs, later
