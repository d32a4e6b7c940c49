"""Using a trained model in the field: streaming embedding, a searchable gallery index, ONNX export."""
