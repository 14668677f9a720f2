"""Personal data kept out of everything mmfuse computes and writes (see masking.PiiMasker)."""
from .masking import DEFAULT_REGIONS, PiiMasker
from .recognizers import KINDS

__all__ = ["DEFAULT_REGIONS", "KINDS", "PiiMasker"]
