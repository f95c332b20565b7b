"""slidemil: whole-slide images to a reproducible multiple-instance-learning benchmark."""

__version__ = "0.1.0"
