"""A trained anomaly detector outside the training framework: ``aelight export`` writes it as an
ONNX (or TorchScript) file with ``metadata.json`` (``aelight.deploy.export``); ``aelight score``
applies it with onnxruntime, numpy and Pillow alone (``aelight.deploy.score``)."""
