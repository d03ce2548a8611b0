"""Building blocks for the QIDO-RS tests: DICOM JSON instances and a loaded index."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from sqlalchemy.orm import Session

from dicomweb_server.index.qido import ParsedQuery, QueryLevel, SearchResult, parse_query, search
from dicomweb_server.index.records import build_record
from dicomweb_server.index.repository import LevelCache, StoredBlob, insert_instance

BASE_URL = "http://127.0.0.1:8042/dicom-web"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
SR_DOCUMENT = "1.2.840.10008.5.1.4.1.1.88.11"
EXPLICIT_LE = "1.2.840.10008.1.2.1"

_counter = itertools.count(1)


def attr(vr: str, *values: Any) -> dict[str, Any]:
    """One DICOM JSON attribute (PS3.18 F.2.2)."""
    return {"vr": vr, "Value": list(values)} if values else {"vr": vr}


def pn(alphabetic: str) -> dict[str, Any]:
    return attr("PN", {"Alphabetic": alphabetic})


def instance(study: str, series: str, sop: str | None = None, /, **extra: Any) -> dict[str, Any]:
    """A minimal instance in DICOM JSON; `extra` maps tags to attributes.

    ``sop_class=`` among `extra` sets the SOP Class UID (CT Image by default).
    """
    sop_class = extra.pop("sop_class", CT_IMAGE)
    dataset: dict[str, Any] = {
        "00080016": attr("UI", sop_class),
        "00080018": attr("UI", sop or f"2.25.{next(_counter)}"),
        "0020000D": attr("UI", study),
        "0020000E": attr("UI", series),
    }
    dataset.update(extra)
    return dict(sorted(dataset.items()))


def store(session: Session, *datasets: dict[str, Any]) -> None:
    """Index the datasets as if stored, and commit."""
    for dataset in datasets:
        uid = dataset["00080018"]["Value"][0]
        blob = StoredBlob(
            blob_key=f"blob/{uid}",
            sha256="0" * 64,
            size=1,
            bulk_json=None,
            pixel_layout_json=None,
            deflated=False,
        )
        insert_instance(session, build_record(dataset, EXPLICIT_LE), blob, LevelCache())
    session.commit()


def query(
    level: QueryLevel,
    params: Sequence[tuple[str, str]] | dict[str, str] = (),
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    default_limit: int = 100,
    max_limit: int = 1000,
) -> ParsedQuery:
    pairs = list(params.items()) if isinstance(params, dict) else list(params)
    return parse_query(
        level,
        pairs,
        study_uid=study_uid,
        series_uid=series_uid,
        default_limit=default_limit,
        max_limit=max_limit,
    )


def run(session: Session, level: QueryLevel, params: Any = (), **kwargs: Any) -> SearchResult:
    return search(session, query(level, params, **kwargs), base_url=BASE_URL)


def values(item: dict[str, Any], tag: str) -> list[Any]:
    return list(item.get(tag, {}).get("Value", []))


def first(item: dict[str, Any], tag: str) -> Any:
    found = values(item, tag)
    return found[0] if found else None


def uids(result: SearchResult, tag: str) -> list[str]:
    """The given UID of every result, in result order."""
    return [first(item, tag) for item in result.items]


def studies(result: SearchResult) -> list[str]:
    return uids(result, "0020000D")


def series_of(result: SearchResult) -> list[str]:
    return uids(result, "0020000E")


def sops(result: SearchResult) -> list[str]:
    return uids(result, "00080018")
