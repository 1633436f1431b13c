"""What ``roiseg fuse`` wrote: the fused model's I/O, opset, node counts, size and warnings."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from graph_tools import Dim
from roiseg.runtime.metadata import FusedMetadata


@dataclass
class FuseReport:
    """What :func:`fuse` wrote (the CLI prints :meth:`summary`)."""

    out: Path
    inputs: list[tuple[str, list[Dim]]]
    outputs: list[tuple[str, list[Dim]]]
    opset: int
    ir_version: int
    nodes_before: int
    nodes_after: int
    simplified: bool
    simplify_note: str
    file_bytes: int
    meta: FusedMetadata
    warnings: list[str] = field(default_factory=list)
    precision_note: str = ""
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "out": str(self.out), "inputs": self.inputs, "outputs": self.outputs, "opset": self.opset,
            "ir_version": self.ir_version, "nodes_before_simplify": self.nodes_before,
            "nodes_after_simplify": self.nodes_after, "simplified": self.simplified,
            "simplify_note": self.simplify_note, "precision_note": self.precision_note, "file_bytes": self.file_bytes,
            "metadata": self.meta.summary(), "warnings": self.warnings, "notes": self.notes,
        }

    def summary(self) -> str:
        """Multi-line human summary: I/O with shapes, opset/IR, node counts, size, path."""
        io_lines = [f"  input  {n:<8} {shape}" for n, shape in self.inputs]
        io_lines += [f"  output {n:<8} {shape}" for n, shape in self.outputs]
        simp = (f"{self.nodes_before} -> {self.nodes_after} nodes ({self.meta.simplifier})" if self.simplified
                else f"{self.nodes_before} nodes (not simplified: {self.simplify_note})")
        lines = [
            f"fused model: {self.out}",
            *io_lines,
            f"  opset {self.opset}, IR version {self.ir_version}",
            f"  nodes: {simp}",
            f"  feature tensor {self.meta.feature_tensor} (stride {self.meta.stride}), "
            f"input {self.meta.input_hw[0]}x{self.meta.input_hw[1]}, head variant {self.meta.head_config.get('variant', '?')}",
            f"  size: {self.file_bytes / 1e6:.1f} MB",
            *([f"  precision: {self.precision_note}"] if self.precision_note else []),
        ]
        lines += [f"  note: {n}" for n in self.notes]
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)
