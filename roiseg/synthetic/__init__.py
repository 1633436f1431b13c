"""Generated stand-ins for what the user has and we do not: a YOLO-like detector ONNX and COCO-format data."""
