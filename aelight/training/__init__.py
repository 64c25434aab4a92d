"""What a training run is made of beyond the model and the data: the training engine
(``engine``: how optimizer steps are taken; ``cuda_graph``: graph-replayed steps), the TensorBoard
logger and callback (``loggers``), and the private Lightning interfaces they need, fenced in one
adapter (``lightning_compat``)."""
