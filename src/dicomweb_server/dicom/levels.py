"""Which attributes belong to the patient/study, series and instance levels.

QIDO-RS answers at three levels (PS3.18 10.6) and the index stores one set of attributes per
study and per series, taken from the first instance stored into it. The sets follow the
modules of PS3.3 whose information entity is Patient, Study, Series, Equipment or Frame of
Reference (C.7.1.1 Patient, C.7.2.1 General Study, C.7.2.2 Patient Study, C.7.3.1 General
Series, C.7.4.1 Frame of Reference, C.7.5.1 General Equipment); everything else is instance
level.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

SPECIFIC_CHARACTER_SET = "00080005"
TIMEZONE_OFFSET = "00080201"

PATIENT_TAGS: frozenset[str] = frozenset(
    {
        "00100010",  # PatientName
        "00100020",  # PatientID
        "00100021",  # IssuerOfPatientID
        "00100022",  # TypeOfPatientID
        "00100024",  # IssuerOfPatientIDQualifiersSequence
        "00100030",  # PatientBirthDate
        "00100032",  # PatientBirthTime
        "00100040",  # PatientSex
        "00101000",  # OtherPatientIDs
        "00101001",  # OtherPatientNames
        "00101002",  # OtherPatientIDsSequence
        "00101005",  # PatientBirthName
        "00101060",  # PatientMotherBirthName
        "00102160",  # EthnicGroup
        "00102201",  # PatientSpeciesDescription
        "00102292",  # PatientBreedDescription
        "00104000",  # PatientComments
        "00101040",  # PatientAddress
        "00101090",  # MedicalRecordLocator
        "00102000",  # MedicalAlerts
        "00102110",  # Allergies
        "00102154",  # PatientTelephoneNumbers
        "00120062",  # PatientIdentityRemoved
        "00120063",  # DeidentificationMethod
        "00120064",  # DeidentificationMethodCodeSequence
    }
)

STUDY_TAGS: frozenset[str] = frozenset(
    {
        "0020000D",  # StudyInstanceUID
        "00080020",  # StudyDate
        "00080030",  # StudyTime
        "00080050",  # AccessionNumber
        "00080051",  # IssuerOfAccessionNumberSequence
        "00080090",  # ReferringPhysicianName
        "00080096",  # ReferringPhysicianIdentificationSequence
        "00200010",  # StudyID
        "00081030",  # StudyDescription
        "00081032",  # ProcedureCodeSequence
        "00081048",  # PhysiciansOfRecord
        "00081060",  # NameOfPhysiciansReadingStudy
        "00081110",  # ReferencedStudySequence
        "00101010",  # PatientAge
        "00101020",  # PatientSize
        "00101030",  # PatientWeight
        "00102180",  # Occupation
        "001021B0",  # AdditionalPatientHistory
        "00321060",  # RequestedProcedureDescription
        "00321032",  # RequestingPhysician
        "00324000",  # StudyComments
        "00081080",  # AdmittingDiagnosesDescription
        "00380010",  # AdmissionID
        "001021C0",  # PregnancyStatus
    }
)

SERIES_TAGS: frozenset[str] = frozenset(
    {
        "0020000E",  # SeriesInstanceUID
        "00080060",  # Modality
        "00200011",  # SeriesNumber
        "0008103E",  # SeriesDescription
        "00080021",  # SeriesDate
        "00080031",  # SeriesTime
        "00180015",  # BodyPartExamined
        "00181030",  # ProtocolName
        "00185100",  # PatientPosition
        "00200060",  # Laterality
        "00081050",  # PerformingPhysicianName
        "00081070",  # OperatorsName
        "00081111",  # ReferencedPerformedProcedureStepSequence
        "00400244",  # PerformedProcedureStepStartDate
        "00400245",  # PerformedProcedureStepStartTime
        "00400253",  # PerformedProcedureStepID
        "00400254",  # PerformedProcedureStepDescription
        "00400275",  # RequestAttributesSequence
        "00200052",  # FrameOfReferenceUID
        "00201040",  # PositionReferenceIndicator
        "00080070",  # Manufacturer
        "00080080",  # InstitutionName
        "00080081",  # InstitutionAddress
        "00081010",  # StationName
        "00081040",  # InstitutionalDepartmentName
        "00081090",  # ManufacturerModelName
        "00181000",  # DeviceSerialNumber
        "00181020",  # SoftwareVersions
    }
)

STUDY_LEVEL_TAGS: frozenset[str] = (
    PATIENT_TAGS | STUDY_TAGS | {SPECIFIC_CHARACTER_SET, TIMEZONE_OFFSET}
)
SERIES_LEVEL_TAGS: frozenset[str] = SERIES_TAGS | {SPECIFIC_CHARACTER_SET, TIMEZONE_OFFSET}


def split_levels(metadata: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return the study-level (with patient) and series-level attributes of one instance."""
    study = {tag: value for tag, value in metadata.items() if tag in STUDY_LEVEL_TAGS}
    series = {tag: value for tag, value in metadata.items() if tag in SERIES_LEVEL_TAGS}
    return study, series
