"""Training stage: the course network, the verified data set, the exact fast loop."""
