"""Scale-out stage: the runtime's predictor on Ray Data, for image sets larger than one process."""
