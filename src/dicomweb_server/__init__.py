"""A DICOMweb origin server: STOW-RS, QIDO-RS and WADO-RS over an index and a blob store."""

__version__ = "0.1.0"
