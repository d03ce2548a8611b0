"""The store path's driver-level statements write what SQLAlchemy would, and fail like it.

They bypass SQLAlchemy's execution (and with it its type conversions and error wrapping),
so rows are read back through the ORM, column by column, and a constraint violation must
still arrive as SQLAlchemy's exception, which retries and error answers are built on.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from dicomweb_server.dicom.transfer_syntax import EXPLICIT_VR_LITTLE_ENDIAN
from dicomweb_server.index import repository
from dicomweb_server.index.database import create_index_engine
from dicomweb_server.index.models import BlobIntent, Instance, Series, Study
from dicomweb_server.index.records import InstanceRecord, build_record

STUDY = "1.2.826.0.1.3680043.10.9.2"
SERIES = f"{STUDY}.1"


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = create_index_engine(database_url)
    try:
        yield engine
    finally:
        engine.dispose()


def _record(index: int, frames: int | None = None) -> InstanceRecord:
    metadata: dict[str, object] = {
        "00080016": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.2"]},
        "00080018": {"vr": "UI", "Value": [f"{SERIES}.{index}"]},
        "00080060": {"vr": "CS", "Value": ["CT"]},
        "00100020": {"vr": "LO", "Value": ["PID-7"]},
        "0020000D": {"vr": "UI", "Value": [STUDY]},
        "0020000E": {"vr": "UI", "Value": [SERIES]},
        "00200013": {"vr": "IS", "Value": [index]},
    }
    if frames is not None:
        metadata["00280008"] = {"vr": "IS", "Value": [frames]}
    return build_record(metadata, EXPLICIT_VR_LITTLE_ENDIAN)


def _blob(index: int) -> repository.StoredBlob:
    return repository.StoredBlob(
        blob_key=f"2026/12/07/key-{index}",
        sha256=f"{index:064x}",
        size=1000 + index,
        bulk_json=b'[["7FE00010","OW",1234,5678]]',
        pixel_layout_json=b'{"frames":[]}' if index % 2 else None,
        deflated=bool(index % 2),
    )


def test_rows_read_back_through_the_orm_as_written(engine: Engine) -> None:
    before = datetime.now(UTC) - timedelta(seconds=5)
    records = {index: _record(index, frames=index) for index in range(1, 5)}
    with engine.begin() as connection:
        cache = repository.LevelCache()
        series_pk = repository.series_key(connection, records[1], cache)
        # One row alone, then several in one statement (one of them already stored).
        assert repository.insert_instances(connection, [(series_pk, records[1], _blob(1))]) == [
            True
        ]
        rows = [(series_pk, records[index], _blob(index)) for index in (2, 1, 3, 4)]
        assert repository.insert_instances(connection, rows) == [True, False, True, True]
        repository.add_intents(connection, ["left/1", "left/2"], "worker-a")
        repository.add_intents(connection, ["left/3"], None)
    with Session(engine) as session:
        instances = {row.instance_number or 0: row for row in session.scalars(select(Instance))}
        assert sorted(instances) == [1, 2, 3, 4]
        for index, row in instances.items():
            blob, columns = _blob(index), records[index].instance
            assert row.series_pk == series_pk
            assert row.sop_instance_uid == columns.sop_instance_uid == f"{SERIES}.{index}"
            assert row.sop_class_uid == columns.sop_class_uid
            assert row.transfer_syntax_uid == EXPLICIT_VR_LITTLE_ENDIAN
            assert row.number_of_frames == index
            assert row.metadata_json == columns.metadata_json
            assert (row.blob_key, row.sha256, row.size) == (blob.blob_key, blob.sha256, blob.size)
            assert row.bulk_json == blob.bulk_json
            assert row.pixel_layout_json == blob.pixel_layout_json
            assert row.deflated is blob.deflated
            created = row.created_at
            created = created if created.tzinfo else created.replace(tzinfo=UTC)
            assert before <= created <= datetime.now(UTC)
        study = session.scalars(select(Study)).one()
        assert (study.study_instance_uid, study.patient_id) == (STUDY, "PID-7")
        assert session.scalars(select(Series)).one().pk == series_pk
        intents = {row.blob_key: row for row in session.scalars(select(BlobIntent))}
        assert {key: row.owner for key, row in intents.items()} == {
            "left/1": "worker-a",
            "left/2": "worker-a",
            "left/3": None,
        }
        assert all(isinstance(row.created_at, datetime) for row in intents.values())
    with engine.begin() as connection:
        states = repository.stored_states(connection, [f"{SERIES}.{n}" for n in (1, 4, 9)])
        assert sorted(states) == [f"{SERIES}.1", f"{SERIES}.4"]
        assert states[f"{SERIES}.4"].sha256 == _blob(4).sha256
        assert states[f"{SERIES}.4"].blob_key == _blob(4).blob_key
        assert states[f"{SERIES}.4"].pk == instances[4].pk
        assert repository.remove_intents(connection, ["left/1", "left/3", "absent"]) == 2
    with Session(engine) as session:
        assert list(session.scalars(select(BlobIntent.blob_key))) == ["left/2"]
        # Stored exactly as SQLAlchemy stores them (on SQLite, datetimes are text of a fixed
        # form that ordering and the lease reaper's comparisons rely on).
        session.add(BlobIntent(blob_key="orm/1", owner=None))
        session.commit()
    with engine.connect() as connection:
        raw = dict(
            connection.exec_driver_sql(
                "SELECT blob_key, created_at FROM blob_intents ORDER BY blob_key"
            ).all()
        )
        written = connection.exec_driver_sql("SELECT created_at FROM instances").scalars().all()
    if engine.dialect.name == "sqlite":
        form = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}")
        assert form.fullmatch(raw["orm/1"]), raw
        assert form.fullmatch(raw["left/2"]), raw
        assert all(form.fullmatch(value) for value in written), written
    else:
        assert type(raw["left/2"]) is type(raw["orm/1"]) is datetime
        assert raw["left/2"].tzinfo is not None


def test_a_driver_error_arrives_as_sqlalchemys(engine: Engine) -> None:
    with engine.connect() as connection:
        transaction = connection.begin()
        with pytest.raises(IntegrityError) as raised:
            repository.add_intents(connection, [None], "worker-a")  # type: ignore[list-item]
        transaction.rollback()
    assert isinstance(raised.value.orig, engine.dialect.loaded_dbapi.Error)
    # The connection is still usable afterwards, as after any failed statement.
    with engine.begin() as connection:
        repository.add_intents(connection, ["after/1"], None)
        assert repository.remove_intents(connection, ["after/1"]) == 1
