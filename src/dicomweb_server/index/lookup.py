"""Index lookups for retrieval and deletion: which instances a WADO-RS path names."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any, NamedTuple

from sqlalchemy import Connection, Select, bindparam, select
from sqlalchemy.orm import Session

from dicomweb_server.index.models import Instance, Series, Study

#: Read-only look-ups run on a plain connection where they can: a Core connection executes
#: the prebuilt statements in well under half the CPU of an ORM session.
Executor = Session | Connection


class InstanceRef(NamedTuple):
    """What retrieval needs to serve one stored instance, without opening it.

    A named tuple rather than a frozen dataclass: a series' metadata or retrieval builds
    hundreds per request, at an eighth of the cost.
    """

    pk: int
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    blob_key: str
    size: int
    sha256: str
    #: The study's patient, as indexed (for the audit trail, which names patients).
    patient_id: str | None = None
    patient_name: str | None = None


_REF_COLUMNS = (
    Instance.pk,
    Study.study_instance_uid,
    Series.series_instance_uid,
    Instance.sop_instance_uid,
    Instance.sop_class_uid,
    Instance.transfer_syntax_uid,
    Instance.blob_key,
    Instance.size,
    Instance.sha256,
    Study.patient_id,
    Study.patient_name,
)


_BULK_COLUMNS = (*_REF_COLUMNS, Instance.bulk_json, Instance.pixel_layout_json, Instance.deflated)


@cache
def _scoped(columns: str, by_series: bool, by_instance: bool) -> Select:  # type: ignore[type-arg]
    """The statement of one look-up shape, built once with bound parameters.

    Every retrieval runs one of these few statements: building the select, its joins and
    its cache key anew per request cost about as much CPU as running it.
    """
    selected = {
        "refs": _REF_COLUMNS,
        "bulk": _BULK_COLUMNS,
        "metadata": (*_REF_COLUMNS, Instance.metadata_json),
    }[columns]
    query = (
        select(*selected)
        .join(Series, Instance.series_pk == Series.pk)
        .join(Study, Series.study_pk == Study.pk)
        .where(Study.study_instance_uid == bindparam("study"))
    )
    if by_series:
        query = query.where(Series.series_instance_uid == bindparam("series"))
    if by_instance:
        query = query.where(Instance.sop_instance_uid == bindparam("instance"))
    # Series in the order they were stored, instances by Instance Number: the order a
    # viewer wants to display them in.
    return query.order_by(Series.pk, Instance.instance_number, Instance.pk)


def _run_scoped(
    session: Executor, columns: str, study: str, series: str | None, instance: str | None
) -> Any:
    params = {"study": study, "series": series, "instance": instance}
    statement = _scoped(columns, series is not None, instance is not None)
    return session.execute(statement, {k: v for k, v in params.items() if v is not None})


def find_instances(
    session: Executor, study: str, series: str | None = None, instance: str | None = None
) -> list[InstanceRef]:
    rows = _run_scoped(session, "refs", study, series, instance).all()
    return [InstanceRef(*row) for row in rows]


def find_metadata(
    session: Executor, study: str, series: str | None = None, instance: str | None = None
) -> list[tuple[InstanceRef, bytes]]:
    """Each instance with its stored DICOM JSON, in retrieval order.

    The references come with the JSON so the audit trail can name what was read without a
    second look-up of the same rows.
    """
    count = len(_REF_COLUMNS)
    rows = _run_scoped(session, "metadata", study, series, instance).all()
    return [(InstanceRef(*row[:count]), row[count]) for row in rows]


@dataclass(frozen=True, slots=True)
class BulkRef:
    instance: InstanceRef
    bulk_json: bytes | None
    pixel_layout_json: bytes | None
    deflated: bool


def _bulk_ref(row: Any) -> BulkRef:
    """A `BulkRef` from a row of the instance columns and the three bulk columns."""
    count = len(_REF_COLUMNS)
    return BulkRef(InstanceRef(*row[:count]), row[count], row[count + 1], bool(row[count + 2]))


def find_bulk(session: Executor, study: str, series: str, instance: str) -> BulkRef | None:
    row = _run_scoped(session, "bulk", study, series, instance).first()
    if row is None:
        return None
    return _bulk_ref(row)


@cache
def _image_instances(by_series: bool, by_instance: bool) -> Select:  # type: ignore[type-arg]
    """The statement of one image look-up shape, built once with bound parameters."""
    query = (
        select(*_BULK_COLUMNS)
        .join(Series, Instance.series_pk == Series.pk)
        .join(Study, Series.study_pk == Study.pk)
        .where(Study.study_instance_uid == bindparam("study"), Instance.rows.is_not(None))
    )
    if by_series:
        query = query.where(Series.series_instance_uid == bindparam("series"))
    if by_instance:
        query = query.where(Instance.sop_instance_uid == bindparam("instance"))
    return query.order_by(
        Series.series_number.is_(None),
        Series.series_number,
        Series.pk,
        Instance.instance_number,
        Instance.pk,
    )


def find_image_instances(
    session: Executor, study: str, series: str | None = None, instance: str | None = None
) -> list[BulkRef]:
    """Instances with pixel data (Rows present), by Series Number, then Instance Number."""
    params = {"study": study, "series": series, "instance": instance}
    statement = _image_instances(series is not None, instance is not None)
    rows = session.execute(statement, {k: v for k, v in params.items() if v is not None})
    return [_bulk_ref(row) for row in rows.all()]
