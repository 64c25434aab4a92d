"""The applications of an autoencoder as commands: each evaluates on the real MNIST test set and
writes a JSON report and PNG figures into the run's folder (``<run>/apps/<name>/``) and to TensorBoard."""
