"""ONNX only, never a framework: the model file, value names, model info, FLOPs, rewrites, and ``conform``,
the passes every exporter's output goes through once."""
