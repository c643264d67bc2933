"""Run a decoder graph's forward one slice of its nodes at a time, so that a check holds a
slice's weights, not the model's.

ONNX Runtime memory-maps a graph's external data, and a forward touches every page of it:
a session over the whole fp32 graph of a 1.5B model holds 7.2 GB, more than twice the
model's fp16 bytes. Cut into consecutive runs of nodes whose weights stay under a budget,
each slice gets a session of its own that is closed before the next one opens; the tensors
crossing a cut (hidden states, residuals, the attention's sequence lengths, the inputs
later layers read) are all that is kept in between. The nodes, weights and kernels are the
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
from jobs.onnx.external_data import external_info, uses_external_data

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
    if uses_external_data(tensor):
        return int(external_info(tensor).get("length") or 0)
    return len(tensor.raw_data) or tensor.ByteSize()


def plan_slices(graph: onnx.GraphProto, weight_budget: int | None) -> list[tuple[int, int]]:
    """Consecutive node ranges [start, end), each reading at most `weight_budget` bytes of
    initializers (or one node's, where a single node reads more). One range when there is
    no budget, or when a node holds a subgraph (If, Loop) that may read names across a cut."""
    if weight_budget is None or any(attribute.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for node in graph.node for attribute in node.attribute):
        return [(0, len(graph.node))]
    sizes = {tensor.name: initializer_bytes(tensor) for tensor in graph.initializer}
    slices: list[tuple[int, int]] = []
    start, held, read = 0, 0, set()
    for index, node in enumerate(graph.node):
        new = {name for name in node.input if name in sizes and name not in read}
        added = sum(sizes[name] for name in new)
        if held and held + added > weight_budget:
            slices.append((start, index))
            start, held, read = index, 0, set()
            new = {name for name in node.input if name in sizes}
            added = sum(sizes[name] for name in new)
        held += added
        read |= new
    slices.append((start, len(graph.node)))
    return slices


class SlicedDecoder:
    """A decoder graph run slice by slice over a list of feeds (one per batch of prompts).

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

    def run(self, output: str, batches: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
        """The `output` tensor for each batch of feeds."""
        import onnxruntime as ort

        options = session_options(lean=True)
        options.add_session_config_entry("session.model_external_initializers_file_folder_path", str(self.path.parent))
        values = [dict(feeds) for feeds in batches]
        types = {value.name: value.type.tensor_type.elem_type for value in self.model.graph.input}
        for piece, inputs, outputs, kept in self._pieces(output, types):
            session = ort.InferenceSession(piece.SerializeToString(), options, providers=["CPUExecutionProvider"])
            types.update({arg.name: _ONNX_TYPES[arg.type] for arg in session.get_outputs()})
            for feeds in values:
                feeds.update(zip(outputs, session.run(outputs, {name: feeds[name] for name in inputs}), strict=True))
                for name in [name for name in feeds if name not in kept]:
                    del feeds[name]
            del session
        return [feeds[output] for feeds in values]

    def _pieces(self, output: str, types: dict[str, int]) -> Iterator[tuple[onnx.ModelProto, list[str], list[str], set[str]]]:
        """Each slice as a model of its own: its nodes, the initializers they read (still
        pointing at the external data files) and, as inputs and outputs, the tensors that
        cross its cuts; with the names still needed after it. Yielded one at a time: a
        slice's input types are known once the slices before it have run."""
        graph = self.model.graph
        initializers = {tensor.name: tensor for tensor in graph.initializer}
        for start, end in self.slices:
            nodes = graph.node[start:end]
            produced = {name for node in nodes for name in node.output if name}
            read = list(dict.fromkeys(name for node in nodes for name in node.input if name))
            later = {name for node in graph.node[end:] for name in node.input if name} | {output}
            inputs = [name for name in read if name not in produced and name not in initializers]
            outputs = [name for node in nodes for name in node.output if name in later]
            piece = onnx.helper.make_model(
                onnx.helper.make_graph(
                    nodes, f"{graph.name}_{start}_{end}",
                    [onnx.helper.make_tensor_value_info(name, types[name], None) for name in inputs],
                    [onnx.ValueInfoProto(name=name) for name in outputs],
                    [initializers[name] for name in read if name in initializers],
                ),
                opset_imports=self.model.opset_import, ir_version=self.model.ir_version,
            )
            yield piece, inputs, outputs, later
