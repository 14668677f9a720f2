"""Personal data kept out of everything mmfuse computes and writes (see masking.PiiMasker; with
privacy.presidio, Microsoft Presidio's analyzer too: presidio.py, imported only then)."""
from .masking import DEFAULT_REGIONS, PiiMasker, masker_for
from .recognizers import KINDS

__all__ = ["DEFAULT_REGIONS", "KINDS", "PiiMasker", "masker_for"]
