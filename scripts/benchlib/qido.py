"""The QIDO-RS study-search mix and how each answer is judged.

Six kinds of search, in turn, as a worklist or viewer sends them (OHIF's ``limit=101`` and
``includefield`` list, repeated rather than comma-separated because Orthanc's plugin reads
only the repeated form): PatientID, a PatientName prefix (``LAST^F*``), AccessionNumber,
a 10-day StudyDate range, ModalitiesInStudy (a broad search: first page only) and
StudyInstanceUID. Every query knows the studies that match it, so a sampled answer is
checked exactly: the same set of studies, or, when more match than the page holds, a full
page of matching ones.
"""

from __future__ import annotations

import bisect
import datetime
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote, urlencode

from .client import Job, Request, Response
from .runner import JSON_ACCEPT
from .servers import Server
from .workload import MODALITIES, Study

LIMIT = 101
INCLUDE = ("00081030", "00080060", "00080090", "00100030")
LABELS = (
    "PatientID",
    "PatientName*",
    "AccessionNumber",
    "StudyDate range",
    "ModalitiesInStudy",
    "StudyInstanceUID",
)


@dataclass(frozen=True, slots=True)
class Query:
    """One search: its label, query parameters and the UIDs of all matching studies."""

    label: str
    params: tuple[tuple[str, str], ...]
    expected: frozenset[str]

    def path(self, prefix: str) -> str:
        params = [*self.params, ("limit", str(LIMIT))] + [("includefield", t) for t in INCLUDE]
        # '^' and '*' are sent as they are: Orthanc's plugin does not decode %5E in a
        # PatientName value (it then matches nothing), and every server accepts them raw.
        return f"{prefix}/studies?{urlencode(params, quote_via=quote, safe='^*')}"

    def judge(self, response: Response) -> bool:
        found = {item["0020000D"]["Value"][0] for item in json.loads(response.body or b"[]")}
        if len(self.expected) <= LIMIT:
            return found == self.expected
        return len(found) == LIMIT and found <= self.expected


class QueryMix:
    """Seeded queries over `studies`, with their expected answers computed from an index."""

    def __init__(self, studies: list[Study], *, seed: int = 17, count: int = 6000) -> None:
        self.studies = studies
        by_pid: dict[str, set[str]] = {}
        by_name: dict[str, set[str]] = {}
        by_modality: dict[str, set[str]] = {}
        for study in studies:
            by_pid.setdefault(study.patient_id, set()).add(study.study_uid)
            last, _, first = study.patient_name.partition("^")
            by_name.setdefault(f"{last}^{first[:1]}", set()).add(study.study_uid)
            by_modality.setdefault(study.modality, set()).add(study.study_uid)
        dated = sorted((study.study_date, study.study_uid) for study in studies)
        dates = [date for date, _ in dated]
        rng = random.Random(seed)
        present = [m for m, _ in MODALITIES if m in by_modality]
        queries = []
        for index in range(count):
            study = studies[rng.randrange(len(studies))]
            label = LABELS[index % len(LABELS)]
            if label == "PatientID":
                query = Query(
                    label, (("PatientID", study.patient_id),), frozenset(by_pid[study.patient_id])
                )
            elif label == "PatientName*":
                last, _, first = study.patient_name.partition("^")
                key = f"{last}^{first[:1]}"
                query = Query(label, (("PatientName", key + "*"),), frozenset(by_name[key]))
            elif label == "AccessionNumber":
                query = Query(
                    label, (("AccessionNumber", study.accession),), frozenset({study.study_uid})
                )
            elif label == "StudyDate range":
                start = study.study_date
                end = (datetime.date.fromisoformat(start) + datetime.timedelta(days=9)).strftime(
                    "%Y%m%d"
                )
                low, high = bisect.bisect_left(dates, start), bisect.bisect_right(dates, end)
                expected = frozenset(uid for _, uid in dated[low:high])
                query = Query(label, (("StudyDate", f"{start}-{end}"),), expected)
            elif label == "ModalitiesInStudy":
                modality = present[rng.randrange(len(present))]
                query = Query(
                    label, (("ModalitiesInStudy", modality),), frozenset(by_modality[modality])
                )
            else:
                query = Query(
                    label, (("StudyInstanceUID", study.study_uid),), frozenset({study.study_uid})
                )
            queries.append(query)
        self.queries = queries

    def jobs(self, server: Server) -> Callable[[int], Job]:
        """Jobs sending the mix in order (cycling), judged on the sampled ones."""
        headers = (("Accept", JSON_ACCEPT),)
        requests = [Request("GET", query.path(server.prefix), headers) for query in self.queries]

        def job(index: int) -> Job:
            query = self.queries[index % len(self.queries)]
            return Job(requests[index % len(requests)], query.judge, label=query.label)

        return job
