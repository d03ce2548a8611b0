"""Status codes of the Storage service used as STOW-RS failure and warning reasons.

PS3.18 10.5.3 reports per-instance outcomes with FailureReason (0008,1197) and
WarningReason (0008,1196) values taken from PS3.4 Annex B.2.3 and PS3.18 Annex I.
"""

from __future__ import annotations

from typing import Final

#: Refused: out of resources (PS3.4 B.2.3).
OUT_OF_RESOURCES: Final = 0xA700
#: Error: data set does not match SOP Class (PS3.4 B.2.3); also used for missing or invalid
#: identifying attributes.
DATASET_DOES_NOT_MATCH_SOP_CLASS: Final = 0xA900
#: Error: cannot understand (PS3.4 B.2.3): the part is not a parsable DICOM PS3.10 file.
CANNOT_UNDERSTAND: Final = 0xC000
#: Processing failure (PS3.7 C.4).
PROCESSING_FAILURE: Final = 0x0110
#: Duplicate SOP Instance (PS3.7 C.4): different content under a stored SOP Instance UID.
DUPLICATE_SOP_INSTANCE: Final = 0x0111
#: Referenced SOP Class not supported (PS3.7 C.4).
SOP_CLASS_NOT_SUPPORTED: Final = 0x0122
#: Referenced transfer syntax not supported (PS3.18 Annex I).
TRANSFER_SYNTAX_NOT_SUPPORTED: Final = 0xC122
#: The Study Instance UID of the instance differs from the one in the request URL (PS3.18 I.2).
STUDY_UID_MISMATCH: Final = 0xC409
#: Warning: coercion of data elements (PS3.4 B.2.3).
COERCION_OF_DATA_ELEMENTS: Final = 0xB000
