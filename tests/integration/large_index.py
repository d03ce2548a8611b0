"""A synthetic archive index of realistic size, written by SQL and described in Python.

The rows are a pure function of the study number, computed once by PostgreSQL (``INSERT ...
SELECT`` over ``generate_series``: 100,000 studies in seconds, where storing instances would
take an hour) and once here, so a test can say which rows a search must return without
asking the database.

Shape: 40,000 patients with 2 to 3 studies each, over five years in pk order (as an archive
fills); 2 or 3 series per study with a skewed modality mix (CT 35 %, ... NM 0.2 %); one
instance per series; a Request Attributes item on every other series. Names are stored
normalised, as :func:`dicomweb_server.dicom.values.normalize_pn` leaves them; one patient in
twenty also has an ideographic group.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from functools import cache
from typing import Final

from sqlalchemy import Connection

UID_ROOT: Final = "1.2.826.0.1.3680043.10.543"
PATIENTS: Final = 40_000
FAMILY_NAMES: Final = (
    "smith", "muller", "garcia", "rossi", "kowalski", "nguyen", "tanaka", "johnson", "brown",
    "dubois", "schmidt", "novak", "jensen", "silva", "ivanov", "kim", "martin", "lopez",
    "bianchi", "murphy", "obrien", "walsh", "fischer", "weber", "meyer", "wagner", "becker",
    "hoffmann", "schulz", "koch", "richter", "klein", "wolf", "schroder", "neumann", "schwarz",
    "zimmermann", "braun", "kruger", "hofmann", "hartmann", "lange", "schmitt", "werner",
    "krause", "meier", "lehmann", "schmid", "schulze", "maier", "kohler", "herrmann", "konig",
    "walter", "mayer", "huber", "kaiser", "fuchs", "peters", "lang",
)  # fmt: skip
GIVEN_NAMES: Final = (
    "john", "anna", "peter", "maria", "paul", "eva", "hans", "lena", "marc", "sara", "jan",
    "nina", "tom", "lisa", "ben", "emma", "max", "mia", "leo", "ida",
)  # fmt: skip
IDEOGRAPHIC: Final = "=山田^太郎"
PHYSICIANS: Final = 300
PHYSICIAN_GIVEN: Final = ("john", "anna", "peter", "maria")
#: (modality, cumulative share in thousandths): CT 35 %, MR 25 %, ... NM 0.2 %.
MODALITY_MIX: Final = (
    ("CT", 350), ("MR", 600), ("CR", 750), ("US", 850), ("DX", 910), ("MG", 950), ("PT", 970),
    ("XA", 985), ("SR", 998), ("NM", 1000),
)  # fmt: skip
SOP_CLASSES: Final = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",
    "MR": "1.2.840.10008.5.1.4.1.1.4",
    "SR": "1.2.840.10008.5.1.4.1.1.88.11",
    "NM": "1.2.840.10008.5.1.4.1.1.20",
}
SECONDARY_CAPTURE: Final = "1.2.840.10008.5.1.4.1.1.7"
FIRST_DAY: Final = date(2019, 1, 1)
DAYS: Final = 1826


@dataclass(frozen=True, slots=True)
class SyntheticSeries:
    pk: int
    uid: str
    number: int
    modality: str
    sop_instance_uid: str
    sop_class_uid: str
    has_request: bool


@dataclass(frozen=True, slots=True)
class SyntheticStudy:
    pk: int
    uid: str
    patient_id: str
    patient_name: str
    study_date: str
    study_time: str
    accession_number: str
    study_id: str
    referring_physician_name: str
    series: tuple[SyntheticSeries, ...]


def _modality(series_pk: int) -> str:
    share = series_pk * 2654435761 % 1000003 % 1000
    return next(name for name, bound in MODALITY_MIX if share < bound)


def _study(n: int, count: int) -> SyntheticStudy:
    patient = n * 7919 % PATIENTS
    name = f"{FAMILY_NAMES[patient % 60]}^{GIVEN_NAMES[patient // 60 % 20]}"
    seconds = 7 * 3600 + n * 7919 % 43200
    uid = f"{UID_ROOT}.{n}"
    series = []
    for k in range(1, 3 + n % 2):
        pk = n * 4 + k
        modality = _modality(pk)
        series.append(
            SyntheticSeries(
                pk=pk,
                uid=f"{uid}.{k}",
                number=k,
                modality=modality,
                sop_instance_uid=f"{uid}.{k}.1",
                sop_class_uid=SOP_CLASSES.get(modality, SECONDARY_CAPTURE),
                has_request=pk % 2 == 0,
            )
        )
    return SyntheticStudy(
        pk=n,
        uid=uid,
        patient_id=f"PID{patient:07d}",
        patient_name=name + (IDEOGRAPHIC if patient % 20 == 0 else ""),
        study_date=(FIRST_DAY + timedelta(days=n * DAYS // count)).strftime("%Y%m%d"),
        study_time=f"{seconds // 3600:02d}{seconds // 60 % 60:02d}{seconds % 60:02d}.000000",
        accession_number=f"ACC{n:08d}",
        study_id=str(n * 31 % 100000),
        referring_physician_name=f"dr{n % PHYSICIANS}^{PHYSICIAN_GIVEN[n % 4]}",
        series=tuple(series),
    )


@cache
def synthetic_studies(count: int) -> tuple[SyntheticStudy, ...]:
    """Every study of an index filled by :func:`fill`, in primary key order."""
    return tuple(_study(n, count) for n in range(1, count + 1))


def _array(values: tuple[str, ...]) -> str:
    return "ARRAY[" + ", ".join(f"'{value}'" for value in values) + "]"


def _fill_statements(count: int) -> list[str]:
    modality = " ".join(f"WHEN x.share < {bound} THEN '{name}'" for name, bound in MODALITY_MIX)
    sop_class = " ".join(f"WHEN '{name}' THEN '{uid}'" for name, uid in SOP_CLASSES.items())
    return [
        f"""
        INSERT INTO studies (pk, study_instance_uid, patient_name, patient_id, study_date,
            study_time, accession_number, study_id, referring_physician_name, attributes,
            created_at)
        SELECT n, '{UID_ROOT}.' || n,
            ({_array(FAMILY_NAMES)})[1 + p % 60] || '^' || ({_array(GIVEN_NAMES)})[1 + p / 60 % 20]
                || CASE WHEN p % 20 = 0 THEN '{IDEOGRAPHIC}' ELSE '' END,
            'PID' || lpad(p::text, 7, '0'),
            to_char(DATE '{FIRST_DAY.isoformat()}' + n * {DAYS} / {count}, 'YYYYMMDD'),
            to_char(TIME '07:00' + make_interval(secs => n * 7919 % 43200), 'HH24MISS')
                || '.000000',
            'ACC' || lpad(n::text, 8, '0'),
            (n * 31 % 100000)::text,
            'dr' || n % {PHYSICIANS} || '^' || ({_array(PHYSICIAN_GIVEN)})[1 + n % 4],
            convert_to('{{"0020000D": {{"vr": "UI", "Value": ["{UID_ROOT}.' || n || '"]}}}}',
                'UTF8'),
            now()
        FROM (SELECT n, n * 7919 % {PATIENTS} AS p FROM generate_series(1, {count}) AS n) AS g
        """,
        f"""
        INSERT INTO series (pk, study_pk, series_instance_uid, modality, series_number,
            performed_procedure_step_start_date, performed_procedure_step_start_time,
            attributes, created_at)
        SELECT x.pk, s.pk, s.study_instance_uid || '.' || x.k,
            CASE {modality} END, x.k, s.study_date, s.study_time,
            convert_to('{{"0020000E": {{"vr": "UI", "Value": ["'
                || s.study_instance_uid || '.' || x.k || '"]}}}}', 'UTF8'),
            now()
        FROM studies AS s
        CROSS JOIN LATERAL (
            SELECT k, s.pk * 4 + k AS pk, (s.pk * 4 + k) * 2654435761 % 1000003 % 1000 AS share
            FROM generate_series(1, 2 + s.pk % 2) AS k
        ) AS x
        """,
        """
        INSERT INTO series_requests (series_pk, requested_procedure_id,
            scheduled_procedure_step_id, accession_number)
        SELECT r.pk, 'RP' || r.study_pk, 'SPS' || r.pk, s.accession_number
        FROM series AS r JOIN studies AS s ON s.pk = r.study_pk
        WHERE r.pk % 2 = 0
        """,
        f"""
        INSERT INTO instances (pk, series_pk, sop_instance_uid, sop_class_uid, instance_number,
            transfer_syntax_uid, size, sha256, blob_key, metadata_json, deflated, created_at)
        SELECT r.pk, r.pk, r.series_instance_uid || '.1',
            CASE r.modality {sop_class} ELSE '{SECONDARY_CAPTURE}' END, 1,
            '1.2.840.10008.1.2.1', 1000, repeat('0', 64), 'blobs/' || r.pk,
            convert_to('{{"00080018": {{"vr": "UI", "Value": ["'
                || r.series_instance_uid || '.1"]}}}}', 'UTF8'),
            false, now()
        FROM series AS r
        """,
    ]


def fill(connection: Connection, count: int) -> None:
    """Insert `count` studies with their series, request items and instances; no commit.

    The tables must be empty and migrated; run ``VACUUM ANALYZE`` afterwards, as autovacuum
    would before anyone searched a real archive this size.
    """
    # Straight to the driver, without parameters: "%" is the modulo operator here, not a
    # placeholder.
    cursor = connection.connection.cursor()
    try:
        for statement in _fill_statements(count):
            cursor.execute(statement)
    finally:
        cursor.close()
