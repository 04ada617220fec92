"""Serving stage: the Open Inference Protocol (KServe v2, Triton's HTTP API) over the runtime's predictor."""
