"""ONNX graph tools for roiseg: load/inspect, trim a detector at a tensor, export the head,
splice both into one model, simplify, and check parity. Each module holds one concept."""
