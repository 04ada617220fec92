"""Export stage: the trained net + its preprocessing as ONNX, TorchScript and .pt2, behind a gate."""
