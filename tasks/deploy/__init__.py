"""Shipping a trained network: ``export`` (ONNX, OpenVINO, INT8) with its pre- and post-processing inside, the
runtimes that run an exported file as if it were the module, and the predictors for application code.

- :mod:`tasks.deploy.export`: ``python -m tasks.<task> export``; checks every file against PyTorch
  (:mod:`tasks.deploy.agreement`) before printing its path.
- :mod:`tasks.deploy.quantize`: static INT8 (ONNX Runtime QDQ), calibrated on training images.
- :mod:`tasks.deploy.runtime`: ``ExportedModel`` and ``run_images``, which run a module or a file alike.
- :mod:`tasks.deploy.predictor`: ``Detector``, ``Segmenter``, ``PoseEstimator`` from a checkpoint or a file.
"""
