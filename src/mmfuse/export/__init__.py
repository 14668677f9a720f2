"""Export: ONNX graphs (towers + fusion head), int8 quantization, magnitude pruning, and the
onnxruntime runner that `Predictor.load` uses for an exported model directory."""
from .pipeline import export_model
from .runner import OnnxRunner, is_exported

__all__ = ["OnnxRunner", "export_model", "is_exported"]
