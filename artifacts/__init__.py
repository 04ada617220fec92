"""The committed outputs of the real run; the model files, their sidecars, the golden vectors and
the sample images ship with the distribution as package data (`fmnist_deploy.models`)."""
