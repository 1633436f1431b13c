"""Frozen detector features: extraction from the detector ONNX (onnxruntime) and the per-image cache."""

from roiseg.features.cache import FeatureCache, parse_cache_dir
from roiseg.features.extractor import ExtractorInfo, OnnxFeatureExtractor, describe_extractor

__all__ = ["ExtractorInfo", "FeatureCache", "OnnxFeatureExtractor", "describe_extractor", "parse_cache_dir"]
