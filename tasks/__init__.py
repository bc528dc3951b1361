"""Kestrel tasks: data, training, metrics, reports and the command line."""

import os

# albumentations checks PyPI for a newer version at import unless told not to.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
