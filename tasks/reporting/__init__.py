"""Reporting: evaluation reports (``report/``), what ``predict`` writes, the figures and drawings both show, and
``python -m tasks.reporting compare``. Figures are ``matplotlib.figure.Figure`` objects: importing Kestrel
chooses no plotting backend."""

from .predictions import DetectionWriter, PoseWriter, PredictionWriter, SegmentationWriter
from .report import ReportWriter, write_report

__all__ = ["DetectionWriter", "PoseWriter", "PredictionWriter", "ReportWriter", "SegmentationWriter", "write_report"]
