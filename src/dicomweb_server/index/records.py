"""Turn an instance's DICOM JSON into the index columns of its study, series and instance.

All normalisation for matching happens here, once, at ingest.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from dicomweb_server.dicom import levels
from dicomweb_server.dicom.values import (
    first_int,
    first_text,
    normalize_da,
    normalize_dt,
    normalize_pn,
    normalize_tm,
)


def _da(metadata: Mapping[str, Any], tag: str) -> str | None:
    text = first_text(metadata, tag)
    return normalize_da(text) if text else None


def _tm(metadata: Mapping[str, Any], tag: str) -> str | None:
    text = first_text(metadata, tag)
    return normalize_tm(text) if text else None


def _pn(metadata: Mapping[str, Any], tag: str) -> str | None:
    text = first_text(metadata, tag)
    return normalize_pn(text) if text else None


def _clip(text: str | None, size: int) -> str | None:
    # Index columns have bounded widths; an over-long value is still returned in full from
    # the stored JSON, only matching sees the clipped form.
    return text[:size] if text is not None else None


@dataclass(slots=True)
class StudyColumns:
    study_instance_uid: str
    patient_name: str | None
    patient_id: str | None
    patient_birth_date: str | None
    patient_sex: str | None
    study_date: str | None
    study_time: str | None
    accession_number: str | None
    study_id: str | None
    study_description: str | None
    referring_physician_name: str | None
    attributes: bytes


@dataclass(slots=True)
class SeriesColumns:
    series_instance_uid: str
    modality: str | None
    series_number: int | None
    series_description: str | None
    series_date: str | None
    series_time: str | None
    body_part_examined: str | None
    performed_procedure_step_start_date: str | None
    performed_procedure_step_start_time: str | None
    attributes: bytes
    requests: list[dict[str, str | None]] = field(default_factory=list)


@dataclass(slots=True)
class InstanceColumns:
    sop_instance_uid: str
    sop_class_uid: str
    instance_number: int | None
    content_date: str | None
    content_time: str | None
    acquisition_datetime: str | None
    transfer_syntax_uid: str
    number_of_frames: int | None
    rows: int | None
    columns: int | None
    metadata_json: bytes


@dataclass(frozen=True, slots=True)
class StoredBlob:
    """Where an instance's bytes are, and what the index knows about them."""

    blob_key: str
    sha256: str
    size: int
    bulk_json: bytes | None
    pixel_layout_json: bytes | None
    deflated: bool


@dataclass(slots=True)
class InstanceRecord:
    """Everything the index stores for one instance, minus where its blob is."""

    study: StudyColumns
    series: SeriesColumns
    instance: InstanceColumns


def _requests(metadata: Mapping[str, Any]) -> list[dict[str, str | None]]:
    attribute = metadata.get("00400275")
    items = attribute.get("Value") if isinstance(attribute, Mapping) else None
    result: list[dict[str, str | None]] = []
    for item in items or []:
        if isinstance(item, Mapping):
            result.append(
                {
                    "requested_procedure_id": _clip(first_text(item, "00401001"), 64),
                    "scheduled_procedure_step_id": _clip(first_text(item, "00400009"), 64),
                    "accession_number": _clip(first_text(item, "00080050"), 64),
                }
            )
    return result


def build_record(metadata: Mapping[str, Any], transfer_syntax_uid: str) -> InstanceRecord:
    """Compute the index columns for one instance from its DICOM JSON."""
    study_attrs, series_attrs = levels.split_levels(metadata)
    acquisition = first_text(metadata, "0008002A")
    study = StudyColumns(
        study_instance_uid=str(first_text(metadata, "0020000D")),
        patient_name=_clip(_pn(metadata, "00100010"), 400),
        patient_id=_clip(first_text(metadata, "00100020"), 64),
        patient_birth_date=_da(metadata, "00100030"),
        patient_sex=_clip(first_text(metadata, "00100040"), 16),
        study_date=_da(metadata, "00080020"),
        study_time=_tm(metadata, "00080030"),
        accession_number=_clip(first_text(metadata, "00080050"), 64),
        study_id=_clip(first_text(metadata, "00200010"), 64),
        study_description=_clip(first_text(metadata, "00081030"), 400),
        referring_physician_name=_clip(_pn(metadata, "00080090"), 400),
        attributes=orjson.dumps(study_attrs),
    )
    series = SeriesColumns(
        series_instance_uid=str(first_text(metadata, "0020000E")),
        modality=_clip(first_text(metadata, "00080060"), 16),
        series_number=first_int(metadata, "00200011"),
        series_description=_clip(first_text(metadata, "0008103E"), 400),
        series_date=_da(metadata, "00080021"),
        series_time=_tm(metadata, "00080031"),
        body_part_examined=_clip(first_text(metadata, "00180015"), 64),
        performed_procedure_step_start_date=_da(metadata, "00400244"),
        performed_procedure_step_start_time=_tm(metadata, "00400245"),
        attributes=orjson.dumps(series_attrs),
        requests=_requests(metadata),
    )
    instance = InstanceColumns(
        sop_instance_uid=str(first_text(metadata, "00080018")),
        sop_class_uid=str(first_text(metadata, "00080016")),
        instance_number=first_int(metadata, "00200013"),
        content_date=_da(metadata, "00080023"),
        content_time=_tm(metadata, "00080033"),
        acquisition_datetime=normalize_dt(acquisition) if acquisition else None,
        transfer_syntax_uid=transfer_syntax_uid,
        number_of_frames=first_int(metadata, "00280008"),
        rows=first_int(metadata, "00280010"),
        columns=first_int(metadata, "00280011"),
        metadata_json=orjson.dumps(metadata),
    )
    return InstanceRecord(study=study, series=series, instance=instance)
