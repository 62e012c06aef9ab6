"""Inference on files, ONNX export and the HTTP server.

* :mod:`medlens.serve.predictor`: :class:`~medlens.serve.predictor.Predictor` decodes files the way
  the training data was decoded, predicts (torch or ONNX Runtime) and explains (Grad-CAM).
* :mod:`medlens.serve.inputs`: expand files, folders and globs into a list of image files.
* :mod:`medlens.serve.onnx_export`: export a run's best model to ONNX and verify it.
* :mod:`medlens.serve.files`: predict (and explain) a list of image files, a row per file.
* :mod:`medlens.serve.app`: the FastAPI service.

Nothing is imported here, so ``medlens --help`` stays instant; import the submodules directly.
"""
