"""QIDO-RS search engine (PS3.18 10.6) against a real index on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, event
from sqlalchemy.orm import Session

from dicomweb_server.errors import BadRequest, UnsupportedQuery
from dicomweb_server.index.database import create_index_engine, session_factory
from dicomweb_server.index.qido import QueryLevel, search
from tests.integration.qido_data import (
    BASE_URL,
    CT_IMAGE,
    MR_IMAGE,
    SR_DOCUMENT,
    attr,
    first,
    instance,
    pn,
    query,
    run,
    series_of,
    sops,
    store,
    studies,
    values,
)

STUDY, SERIES, INSTANCE = QueryLevel.STUDY, QueryLevel.SERIES, QueryLevel.INSTANCE


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = create_index_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def session(engine: Engine) -> Iterator[Session]:
    with session_factory(engine)() as session:
        yield session


def study_instance(study: str, **extra: Any) -> dict[str, Any]:
    """One instance in its own series of `study`."""
    return instance(study, f"{study}.1", f"{study}.1.1", **extra)


# -- single value, universal and wild card matching -------------------------------------------


def test_single_value_matching_is_exact_and_case_sensitive(session: Session) -> None:
    store(
        session,
        study_instance("1.1", **{"00080050": attr("SH", "ACC1")}),
        study_instance("1.2", **{"00080050": attr("SH", "ACC12")}),
        study_instance("1.3", **{"00080050": attr("SH", "acc1")}),
    )
    assert studies(run(session, STUDY, {"AccessionNumber": "ACC1"})) == ["1.1"]
    assert studies(run(session, STUDY, {"AccessionNumber": "  ACC1 "})) == ["1.1"]
    assert studies(run(session, STUDY, {"AccessionNumber": "acc1"})) == ["1.3"]
    assert studies(run(session, STUDY, {"AccessionNumber": "ACC"})) == []


def test_universal_matching_returns_the_attribute_without_filtering(session: Session) -> None:
    store(
        session,
        study_instance("1.1", **{"00081030": attr("LO", "Chest")}),
        study_instance("1.2"),
    )
    result = run(session, STUDY, {"StudyDescription": ""})
    assert studies(result) == ["1.1", "1.2"]
    assert result.items[0]["00081030"] == attr("LO", "Chest")
    assert result.items[1]["00081030"] == {"vr": "LO"}
    # "*" alone is universal too (PS3.4 C.2.2.2.4): entities without a value still match.
    assert studies(run(session, STUDY, {"StudyDescription": "*"})) == ["1.1", "1.2"]


def test_an_empty_attribute_changed_by_a_caller_does_not_leak_into_later_results(
    session: Session,
) -> None:
    # Plans are reused between searches of the same shape; the empty values they return
    # must still be fresh objects for every result.
    store(session, study_instance("1.1"), study_instance("1.2"))
    first_result = run(session, STUDY, {"StudyDescription": ""})
    first_result.items[0]["00081030"]["Value"] = ["changed"]
    again = run(session, STUDY, {"StudyDescription": ""})
    assert [item["00081030"] for item in again.items] == [{"vr": "LO"}, {"vr": "LO"}]
    assert first_result.items[1]["00081030"] == {"vr": "LO"}


def test_results_list_attributes_in_tag_order(session: Session) -> None:
    store(session, study_instance("1.1", **{"00081030": attr("LO", "Chest")}))
    result = run(session, STUDY, {"PatientID": "", "includefield": "00081030,00080090"})
    tags = list(result.items[0])
    assert tags == sorted(tags)


def test_star_wild_card(session: Session) -> None:
    store(
        session,
        study_instance("1.1", **{"00100020": attr("LO", "PID-100")}),
        study_instance("1.2", **{"00100020": attr("LO", "PID-200")}),
        study_instance("1.3", **{"00100020": attr("LO", "pid-300")}),
    )
    assert studies(run(session, STUDY, {"PatientID": "PID*"})) == ["1.1", "1.2"]
    assert studies(run(session, STUDY, {"PatientID": "*00"})) == ["1.1", "1.2", "1.3"]
    assert studies(run(session, STUDY, {"PatientID": "*-2*"})) == ["1.2"]


def test_question_mark_wild_card(session: Session) -> None:
    store(
        session,
        study_instance("1.1", **{"00100020": attr("LO", "A1")}),
        study_instance("1.2", **{"00100020": attr("LO", "A12")}),
        study_instance("1.3", **{"00100020": attr("LO", "B1")}),
    )
    assert studies(run(session, STUDY, {"PatientID": "?1"})) == ["1.1", "1.3"]
    assert studies(run(session, STUDY, {"PatientID": "A??"})) == ["1.2"]


def test_sql_pattern_characters_are_literal(session: Session) -> None:
    # "%", "_" (LIKE) and "[" (GLOB) in values or queries must not act as wild cards.
    store(
        session,
        study_instance("1.1", **{"00100020": attr("LO", "A_1")}),
        study_instance("1.2", **{"00100020": attr("LO", "AB1")}),
        study_instance("1.3", **{"00100020": attr("LO", "C%[x]")}),
        study_instance("1.4", **{"00100020": attr("LO", "CD[x]")}),
    )
    assert studies(run(session, STUDY, {"PatientID": "A_1"})) == ["1.1"]
    assert studies(run(session, STUDY, {"PatientID": "A_*"})) == ["1.1"]
    assert studies(run(session, STUDY, {"PatientID": "C%*"})) == ["1.3"]
    assert studies(run(session, STUDY, {"PatientID": "*[x]"})) == ["1.3", "1.4"]
    assert studies(run(session, STUDY, {"PatientID": "C?[x*"})) == ["1.3", "1.4"]


def test_different_patterns_in_turn_are_not_mixed_up_by_the_statement_cache(
    session: Session,
) -> None:
    store(
        session,
        study_instance("1.1", **{"00100020": attr("LO", "X1")}),
        study_instance("1.2", **{"00100020": attr("LO", "Y1")}),
    )
    for _ in range(2):
        assert studies(run(session, STUDY, {"PatientID": "X*"})) == ["1.1"]
        assert studies(run(session, STUDY, {"PatientID": "Y*"})) == ["1.2"]


def test_multiple_values_are_alternatives(session: Session) -> None:
    store(
        session,
        study_instance("1.1", **{"00100020": attr("LO", "P1")}),
        study_instance("1.2", **{"00100020": attr("LO", "P2")}),
        study_instance("1.3", **{"00100020": attr("LO", "Q3")}),
    )
    assert studies(run(session, STUDY, {"PatientID": "P1\\Q*"})) == ["1.1", "1.3"]


# -- UIDs -------------------------------------------------------------------------------------


def test_uid_list_matching_with_commas(session: Session) -> None:
    store(session, study_instance("1.1"), study_instance("1.2"), study_instance("1.3"))
    result = run(session, STUDY, {"StudyInstanceUID": "1.1,1.3,1.9"})
    assert studies(result) == ["1.1", "1.3"]


def test_uid_list_matching_with_backslashes(session: Session) -> None:
    store(session, study_instance("1.1"), study_instance("1.2"), study_instance("1.3"))
    assert studies(run(session, STUDY, {"0020000D": "1.2\\1.3"})) == ["1.2", "1.3"]
    assert studies(run(session, STUDY, {"StudyInstanceUID": "1.2"})) == ["1.2"]


@pytest.mark.parametrize("value", ["1.2.*", "1..2", "1.02", "1.2,", "abc", "1." + "1" * 70])
def test_invalid_uid_is_refused(value: str) -> None:
    with pytest.raises(BadRequest, match="invalid UID"):
        query(STUDY, {"StudyInstanceUID": value})


def test_sop_class_and_instance_uid_keys(session: Session) -> None:
    store(
        session,
        instance("1.1", "1.1.1", "1.1.1.1", sop_class=CT_IMAGE),
        instance("1.1", "1.1.1", "1.1.1.2", sop_class=MR_IMAGE),
    )
    assert sops(run(session, INSTANCE, {"SOPClassUID": MR_IMAGE})) == ["1.1.1.2"]
    assert sops(run(session, INSTANCE, {"SOPInstanceUID": "1.1.1.1"})) == ["1.1.1.1"]
    assert studies(run(session, STUDY, {"SOPClassesInStudy": MR_IMAGE})) == ["1.1"]


def test_modalities_and_sop_classes_in_study_together(session: Session) -> None:
    """Both keys in one search: two subqueries over the same tables, each matched on its own
    (the series with the modality need not hold the SOP class)."""
    ct, mr = attr("CS", "CT"), attr("CS", "MR")
    store(
        session,
        instance("1.1", "1.1.1", sop_class=CT_IMAGE, **{"00080060": ct}),
        instance("1.1", "1.1.2", sop_class=MR_IMAGE, **{"00080060": mr}),
        instance("1.2", "1.2.1", sop_class=CT_IMAGE, **{"00080060": ct}),
        instance("1.3", "1.3.1", sop_class=MR_IMAGE, **{"00080060": mr}),
        instance("1.4", "1.4.1", sop_class=SR_DOCUMENT),
    )
    both = {"ModalitiesInStudy": "CT", "SOPClassesInStudy": MR_IMAGE}
    assert studies(run(session, STUDY, both)) == ["1.1"]
    either = {"ModalitiesInStudy": "CT\\MR", "SOPClassesInStudy": f"{CT_IMAGE},{SR_DOCUMENT}"}
    assert studies(run(session, STUDY, either)) == ["1.1", "1.2"]
    # A page smaller than the matches: the count runs the same conditions.
    paged = run(session, STUDY, {**either, "limit": "1"})
    assert studies(paged) == ["1.1"] and paged.remaining == 1
    no_modality = {
        "ModalitiesInStudy": '""',
        "SOPClassesInStudy": SR_DOCUMENT,
        "emptyvaluematching": "true",
    }
    assert studies(run(session, STUDY, no_modality)) == ["1.4"]


# -- dates, times, date-times -----------------------------------------------------------------


@pytest.fixture
def dated(session: Session) -> Session:
    store(
        session,
        study_instance("1.1", **{"00080020": attr("DA", "20200101")}),
        study_instance("1.2", **{"00080020": attr("DA", "20200615")}),
        study_instance("1.3", **{"00080020": attr("DA", "20201231")}),
        study_instance("1.4"),
    )
    return session


def test_date_single_value(dated: Session) -> None:
    assert studies(run(dated, STUDY, {"StudyDate": "20200615"})) == ["1.2"]
    assert studies(run(dated, STUDY, {"StudyDate": "2020.06.15"})) == ["1.2"]


def test_date_closed_range(dated: Session) -> None:
    assert studies(run(dated, STUDY, {"StudyDate": "20200101-20200615"})) == ["1.1", "1.2"]
    assert studies(run(dated, STUDY, {"StudyDate": "20200102-20200614"})) == []


def test_date_open_ranges(dated: Session) -> None:
    assert studies(run(dated, STUDY, {"StudyDate": "20200615-"})) == ["1.2", "1.3"]
    assert studies(run(dated, STUDY, {"StudyDate": "-20200615"})) == ["1.1", "1.2"]


def test_patient_birth_date_range(session: Session) -> None:
    store(
        session,
        study_instance("1.1", **{"00100030": attr("DA", "19700101")}),
        study_instance("1.2", **{"00100030": attr("DA", "19900101")}),
    )
    assert studies(run(session, STUDY, {"PatientBirthDate": "-19800101"})) == ["1.1"]


@pytest.mark.parametrize(
    "value", ["2020", "20201301", "20200230", "2020-01-01", "yesterday", "٢٠٢٠٠١٠١", "*"]
)
def test_bad_date_is_refused(value: str) -> None:
    with pytest.raises(BadRequest, match="StudyDate"):
        query(STUDY, {"StudyDate": value})


@pytest.mark.parametrize("value", ["20201231-20200101", "-", "20200101-20200102-20200103"])
def test_bad_date_range_is_refused(value: str) -> None:
    with pytest.raises(BadRequest, match="StudyDate"):
        query(STUDY, {"StudyDate": value})


def test_time_single_value_covers_its_precision(session: Session) -> None:
    store(
        session,
        study_instance("1.1", **{"00080030": attr("TM", "103015")}),
        study_instance("1.2", **{"00080030": attr("TM", "113000.5")}),
    )
    assert studies(run(session, STUDY, {"StudyTime": "10"})) == ["1.1"]
    assert studies(run(session, STUDY, {"StudyTime": "1030"})) == ["1.1"]
    assert studies(run(session, STUDY, {"StudyTime": "103015"})) == ["1.1"]
    assert studies(run(session, STUDY, {"StudyTime": "10:30:16"})) == []


def test_time_ranges(session: Session) -> None:
    store(
        session,
        study_instance("1.1", **{"00080030": attr("TM", "080000")}),
        study_instance("1.2", **{"00080030": attr("TM", "103059.9")}),
        study_instance("1.3", **{"00080030": attr("TM", "23")}),
    )
    assert studies(run(session, STUDY, {"StudyTime": "0800-1030"})) == ["1.1", "1.2"]
    assert studies(run(session, STUDY, {"StudyTime": "-10"})) == ["1.1", "1.2"]
    assert studies(run(session, STUDY, {"StudyTime": "1031-"})) == ["1.3"]
    assert studies(run(session, STUDY, {"StudyTime": "08:00:01-22:59"})) == ["1.2"]


@pytest.mark.parametrize("value", ["25", "1060", "106161", "10.5", "1200-1100", "ab"])
def test_bad_time_is_refused(value: str) -> None:
    with pytest.raises(BadRequest, match="StudyTime"):
        query(STUDY, {"StudyTime": value})


def test_series_date_and_time_keys(session: Session) -> None:
    store(
        session,
        instance(
            "1.1", "1.1.1", **{"00080021": attr("DA", "20210101"), "00080031": attr("TM", "09")}
        ),
        instance(
            "1.1", "1.1.2", **{"00080021": attr("DA", "20210102"), "00080031": attr("TM", "10")}
        ),
    )
    assert series_of(run(session, SERIES, {"SeriesDate": "20210102"})) == ["1.1.2"]
    assert series_of(run(session, SERIES, {"SeriesTime": "-0959"})) == ["1.1.1"]


def test_performed_procedure_step_start_keys(session: Session) -> None:
    store(
        session,
        instance("1.1", "1.1.1", **{"00400244": attr("DA", "20210101")}),
        instance(
            "1.1", "1.1.2", **{"00400244": attr("DA", "20210301"), "00400245": attr("TM", "12")}
        ),
    )
    result = run(session, SERIES, {"PerformedProcedureStepStartDate": "20210201-"})
    assert series_of(result) == ["1.1.2"]
    assert first(result.items[0], "00400244") == "20210301"
    result = run(session, SERIES, {"PerformedProcedureStepStartTime": "1200-1300"})
    assert series_of(result) == ["1.1.2"]


def test_content_date_and_time_keys(session: Session) -> None:
    store(
        session,
        instance("1.1", "1.1.1", "1.1.1.1", **{"00080023": attr("DA", "20220101")}),
        instance(
            "1.1",
            "1.1.1",
            "1.1.1.2",
            **{"00080023": attr("DA", "20220102"), "00080033": attr("TM", "1415")},
        ),
    )
    assert sops(run(session, INSTANCE, {"ContentDate": "20220102-"})) == ["1.1.1.2"]
    assert sops(run(session, INSTANCE, {"ContentTime": "14"})) == ["1.1.1.2"]


def test_datetime_range(session: Session) -> None:
    store(
        session,
        instance("1.1", "1.1.1", "1.1.1.1", **{"0008002A": attr("DT", "20200102103000")}),
        instance("1.1", "1.1.1", "1.1.1.2", **{"0008002A": attr("DT", "20200103000000.5")}),
        instance("1.1", "1.1.1", "1.1.1.3"),
    )
    key = "AcquisitionDateTime"
    assert sops(run(session, INSTANCE, {key: "20200101-20200102"})) == ["1.1.1.1"]
    assert sops(run(session, INSTANCE, {key: "202001021031-"})) == ["1.1.1.2"]
    assert sops(run(session, INSTANCE, {key: "-2020"})) == ["1.1.1.1", "1.1.1.2"]
    assert sops(run(session, INSTANCE, {key: "2020010210"})) == ["1.1.1.1"]
    # A UTC offset's "-" is not taken for the range separator.
    assert sops(run(session, INSTANCE, {key: "20200102103000-0500"})) == ["1.1.1.1"]
    both = "20200102+0100-20200102235959-0500"
    assert sops(run(session, INSTANCE, {key: both})) == ["1.1.1.1"]


@pytest.mark.parametrize("value", ["2020-2019", "202013", "20200101250000", "x-", "-"])
def test_bad_datetime_is_refused(value: str) -> None:
    with pytest.raises(BadRequest, match="AcquisitionDateTime"):
        query(INSTANCE, {"AcquisitionDateTime": value})


# -- person names -----------------------------------------------------------------------------


@pytest.fixture
def named(session: Session) -> Session:
    store(
        session,
        study_instance("1.1", **{"00100010": pn("Doe^John")}),
        study_instance("1.2", **{"00100010": pn("Johnson^Ann")}),
        study_instance("1.3", **{"00100010": pn("Müller^Jürgen")}),
        study_instance("1.4", **{"00100010": pn("Smith^Bob")}),
        study_instance(
            "1.5",
            **{"00100010": attr("PN", {"Alphabetic": "Yamada^Taro", "Ideographic": "山田^太郎"})},
        ),
    )
    return session


def test_person_name_matching_is_case_insensitive(named: Session) -> None:
    assert studies(run(named, STUDY, {"PatientName": "DOE^JOHN"})) == ["1.1"]
    assert studies(run(named, STUDY, {"PatientName": "doe^john"})) == ["1.1"]
    assert studies(run(named, STUDY, {"PatientName": "doe^john^^"})) == ["1.1"]
    assert studies(run(named, STUDY, {"PatientName": "doe"})) == []


def test_person_name_wild_cards_apply_to_the_folded_name(named: Session) -> None:
    assert studies(run(named, STUDY, {"PatientName": "JOHN*"})) == ["1.2"]
    assert studies(run(named, STUDY, {"PatientName": "*JOHN*"})) == ["1.1", "1.2"]
    assert studies(run(named, STUDY, {"PatientName": "D?E*"})) == ["1.1"]


def test_trailing_star_components_also_match_absent_components(session: Session) -> None:
    store(
        session,
        study_instance("1.1", **{"00100010": pn("Doe")}),
        study_instance("1.2", **{"00100010": pn("Doe^John")}),
        study_instance("1.3", **{"00100010": pn("Doering^Jo")}),
    )
    assert studies(run(session, STUDY, {"PatientName": "Doe^*"})) == ["1.1", "1.2"]
    assert studies(run(session, STUDY, {"PatientName": "Doe^*^*"})) == ["1.1", "1.2"]


def test_person_name_matching_ignores_accents(named: Session) -> None:
    assert studies(run(named, STUDY, {"PatientName": "muller^jurgen"})) == ["1.3"]
    assert studies(run(named, STUDY, {"PatientName": "MÜLLER*"})) == ["1.3"]


def test_person_name_query_without_groups_matches_the_alphabetic_group(named: Session) -> None:
    assert studies(run(named, STUDY, {"PatientName": "yamada^taro"})) == ["1.5"]
    assert studies(run(named, STUDY, {"PatientName": "Yamada^Taro=山田^太郎"})) == ["1.5"]
    assert studies(run(named, STUDY, {"PatientName": "*=山田*"})) == ["1.5"]


def test_fuzzy_matching_is_a_prefix_match_on_any_name_component(named: Session) -> None:
    params = {"PatientName": "joh", "fuzzymatching": "true"}
    assert studies(run(named, STUDY, params)) == ["1.1", "1.2"]
    params = {"PatientName": "jo^do", "fuzzymatching": "true"}
    assert studies(run(named, STUDY, params)) == ["1.1"]
    params = {"PatientName": "JÜRG", "fuzzymatching": "true"}
    assert studies(run(named, STUDY, params)) == ["1.3"]
    params = {"PatientName": "taro", "fuzzymatching": "true"}
    assert studies(run(named, STUDY, params)) == ["1.5"]
    params = {"PatientName": "ohn", "fuzzymatching": "true"}
    assert studies(run(named, STUDY, params)) == []
    params = {"PatientName": "joh", "fuzzymatching": "false"}
    assert studies(run(named, STUDY, params)) == []


def test_referring_physician_name(session: Session) -> None:
    store(
        session,
        study_instance("1.1", **{"00080090": pn("House^Gregory")}),
        study_instance("1.2", **{"00080090": pn("Wilson^James")}),
    )
    assert studies(run(session, STUDY, {"ReferringPhysicianName": "house^*"})) == ["1.1"]
    params = {"ReferringPhysicianName": "jam", "fuzzymatching": "true"}
    assert studies(run(session, STUDY, params)) == ["1.2"]


# -- study, series and sequence keys ------------------------------------------------------------


@pytest.fixture
def modalities(session: Session) -> Session:
    store(
        session,
        instance("1.1", "1.1.1", **{"00080060": attr("CS", "CT")}),
        instance("1.1", "1.1.2", **{"00080060": attr("CS", "MR")}),
        instance("1.1", "1.1.3", **{"00080060": attr("CS", "SR")}, sop_class=SR_DOCUMENT),
        instance("1.2", "1.2.1", **{"00080060": attr("CS", "MR")}),
        instance("1.3", "1.3.1", **{"00080060": attr("CS", "US")}),
    )
    return session


def test_modalities_in_study_matches_any_series(modalities: Session) -> None:
    result = run(modalities, STUDY, {"ModalitiesInStudy": "MR"})
    assert studies(result) == ["1.1", "1.2"]
    assert values(result.items[0], "00080061") == ["CT", "MR", "SR"]
    assert values(result.items[1], "00080061") == ["MR"]
    assert studies(run(modalities, STUDY, {"ModalitiesInStudy": "CT\\US"})) == ["1.1", "1.3"]
    assert studies(run(modalities, STUDY, {"ModalitiesInStudy": "S*"})) == ["1.1"]
    assert studies(run(modalities, STUDY, {"ModalitiesInStudy": "XA"})) == []


def test_modalities_in_study_pagination_counts_studies_not_series(modalities: Session) -> None:
    # Study 1.1 has two series whose modality starts with M or S: it counts once, whether
    # the count is read off the series (ModalitiesInStudy alone) or over the studies.
    def remaining(params: dict[str, str]) -> int:
        return run(modalities, STUDY, {**params, "limit": "1"}).remaining

    assert remaining({"ModalitiesInStudy": "MR"}) == 1
    assert remaining({"ModalitiesInStudy": "MR\\SR\\US"}) == 2
    assert remaining({"ModalitiesInStudy": "?R"}) == 1
    assert remaining({"ModalitiesInStudy": "MR", "StudyInstanceUID": "1.1,1.2"}) == 1
    assert remaining({"ModalitiesInStudy": "MR", "PatientID": "nobody"}) == 0
    assert remaining({"ModalitiesInStudy": "CT"}) == 0


def test_modality_multiple_values_at_series_level(modalities: Session) -> None:
    result = run(modalities, SERIES, {"Modality": "MR\\US"})
    assert series_of(result) == ["1.1.2", "1.2.1", "1.3.1"]


def test_series_number_and_description_keys(session: Session) -> None:
    store(
        session,
        instance("1.1", "1.1.1", **{"00200011": attr("IS", 1), "0008103E": attr("LO", "Axial")}),
        instance("1.1", "1.1.2", **{"00200011": attr("IS", 2), "0008103E": attr("LO", "Coronal")}),
        instance("1.1", "1.1.3", **{"00180015": attr("CS", "CHEST")}),
    )
    assert series_of(run(session, SERIES, {"SeriesNumber": "2"})) == ["1.1.2"]
    assert series_of(run(session, SERIES, {"SeriesNumber": "+1"})) == ["1.1.1"]
    assert series_of(run(session, SERIES, {"SeriesNumber": "1\\2"})) == ["1.1.1", "1.1.2"]
    assert series_of(run(session, SERIES, {"SeriesDescription": "Cor*"})) == ["1.1.2"]
    assert series_of(run(session, SERIES, {"BodyPartExamined": "CHEST"})) == ["1.1.3"]


def test_instance_number_key(session: Session) -> None:
    store(
        session,
        instance("1.1", "1.1.1", "1.1.1.1", **{"00200013": attr("IS", 1)}),
        instance("1.1", "1.1.1", "1.1.1.2", **{"00200013": attr("IS", 3)}),
    )
    result = run(session, INSTANCE, {"InstanceNumber": "3"})
    assert sops(result) == ["1.1.1.2"]
    assert first(result.items[0], "00200013") == 3


@pytest.mark.parametrize("value", ["x", "1.5", "1e3", "*", "2147483648", "99999999999"])
def test_bad_number_is_refused(value: str) -> None:
    with pytest.raises(BadRequest, match="InstanceNumber"):
        query(INSTANCE, {"InstanceNumber": value})


def request_item(**tags: str) -> dict[str, Any]:
    keywords = {"sps": "00400009", "rp": "00401001", "acc": "00080050"}
    return {keywords[name]: attr("SH", value) for name, value in tags.items()}


@pytest.fixture
def requested(session: Session) -> Session:
    store(
        session,
        instance(
            "1.1",
            "1.1.1",
            **{"00400275": attr("SQ", request_item(sps="SPS1", rp="RP1", acc="A1"))},
        ),
        instance(
            "1.1",
            "1.1.2",
            **{
                "00400275": attr(
                    "SQ", request_item(sps="SPS2", rp="RP9"), request_item(sps="SPS3", rp="RP3")
                )
            },
        ),
        instance("1.1", "1.1.3"),
    )
    return session


def test_sequence_keys_by_keyword_and_tag(requested: Session) -> None:
    key = "RequestAttributesSequence.ScheduledProcedureStepID"
    result = run(requested, SERIES, {key: "SPS1"})
    assert series_of(result) == ["1.1.1"]
    assert result.items[0]["00400275"]["Value"][0]["00400009"] == attr("SH", "SPS1")
    assert series_of(run(requested, SERIES, {"00400275.00400009": "SPS3"})) == ["1.1.2"]
    key = "RequestAttributesSequence.RequestedProcedureID"
    assert series_of(run(requested, SERIES, {key: "RP*"})) == ["1.1.1", "1.1.2"]
    assert series_of(run(requested, SERIES, {"00400275.00080050": "A1"})) == ["1.1.1"]


def test_sequence_item_keys_must_match_the_same_item(requested: Session) -> None:
    params = {"00400275.00400009": "SPS2", "00400275.00401001": "RP3"}
    assert series_of(run(requested, SERIES, params)) == []
    params = {"00400275.00400009": "SPS3", "00400275.00401001": "RP3"}
    assert series_of(run(requested, SERIES, params)) == ["1.1.2"]


def test_empty_value_matching(session: Session) -> None:
    store(
        session,
        study_instance("1.1", **{"00081030": attr("LO", "Head")}),
        study_instance("1.2"),
    )
    params = {"StudyDescription": '""', "emptyvaluematching": "true"}
    assert studies(run(session, STUDY, params)) == ["1.2"]
    assert studies(run(session, STUDY, {"StudyDescription": '""'})) == []


# -- key names and levels ---------------------------------------------------------------------


def test_keys_by_tag_in_either_case_and_by_keyword(named: Session) -> None:
    for key in ("PatientName", "00100010", "00100010".lower()):
        assert studies(run(named, STUDY, {key: "smith^bob"})) == ["1.4"]
    assert studies(run(named, STUDY, {"0020000d": "1.4"})) == ["1.4"]


def test_higher_level_keys_at_lower_levels(session: Session) -> None:
    store(
        session,
        instance(
            "1.1",
            "1.1.1",
            "1.1.1.1",
            **{
                "00100010": pn("Doe^Jane"),
                "00080020": attr("DA", "20200101"),
                "00080060": attr("CS", "CT"),
            },
        ),
        instance("1.2", "1.2.1", "1.2.1.1", **{"00100010": pn("Roe^Rick")}),
        instance("1.2", "1.2.2", "1.2.2.1", **{"00080060": attr("CS", "CT")}),
    )
    result = run(session, INSTANCE, {"PatientName": "doe*"})
    assert sops(result) == ["1.1.1.1"]
    assert sops(run(session, INSTANCE, {"Modality": "CT"})) == ["1.1.1.1", "1.2.2.1"]
    assert series_of(run(session, SERIES, {"StudyDate": "20200101-"})) == ["1.1.1"]
    assert series_of(run(session, SERIES, {"ModalitiesInStudy": "CT"})) == [
        "1.1.1",
        "1.2.1",
        "1.2.2",
    ]


@pytest.mark.parametrize(
    ("level", "key"),
    [
        (STUDY, "Modality"),
        (STUDY, "SeriesInstanceUID"),
        (STUDY, "SOPInstanceUID"),
        (SERIES, "InstanceNumber"),
        (SERIES, "SOPClassUID"),
    ],
)
def test_lower_level_keys_are_unsupported_at_higher_levels(level: QueryLevel, key: str) -> None:
    with pytest.raises(UnsupportedQuery, match=key):
        query(level, {key: "1"})


# -- path-scoped searches ---------------------------------------------------------------------


@pytest.fixture
def tree(session: Session) -> Session:
    store(
        session,
        instance("1.1", "1.1.1", "1.1.1.1", **{"00100010": pn("A^A")}),
        instance("1.1", "1.1.1", "1.1.1.2", **{"00100010": pn("A^A")}),
        instance("1.1", "1.1.2", "1.1.2.1", **{"00100010": pn("A^A")}),
        instance("1.2", "1.2.1", "1.2.1.1", **{"00100010": pn("B^B")}),
    )
    return session


def test_series_of_a_study(tree: Session) -> None:
    result = run(tree, SERIES, study_uid="1.1")
    assert series_of(result) == ["1.1.1", "1.1.2"]
    # Scoped to a study: the study attributes are not repeated (PS3.18 10.6.3.3.2).
    assert "00100010" not in result.items[0]
    assert "0020000D" not in result.items[0]
    assert first(result.items[0], "00081190") == f"{BASE_URL}/studies/1.1/series/1.1.1"


def test_instances_of_a_study(tree: Session) -> None:
    result = run(tree, INSTANCE, study_uid="1.1")
    assert sops(result) == ["1.1.1.1", "1.1.1.2", "1.1.2.1"]
    assert "0020000E" in result.items[0]
    assert "00100010" not in result.items[0]


def test_instances_of_a_series(tree: Session) -> None:
    result = run(tree, INSTANCE, study_uid="1.1", series_uid="1.1.1")
    assert sops(result) == ["1.1.1.1", "1.1.1.2"]
    assert "0020000E" not in result.items[0]
    assert "0020000D" not in result.items[0]
    url = f"{BASE_URL}/studies/1.1/series/1.1.1/instances/1.1.1.1"
    assert first(result.items[0], "00081190") == url


def test_unknown_or_mismatched_path_uids_match_nothing(tree: Session) -> None:
    assert run(tree, SERIES, study_uid="9.9").items == []
    assert run(tree, INSTANCE, study_uid="1.2", series_uid="1.1.1").items == []
    assert run(tree, INSTANCE, study_uid="1.1", series_uid="9.9").items == []


def test_path_scope_combines_with_keys(tree: Session) -> None:
    result = run(tree, INSTANCE, {"SeriesInstanceUID": "1.1.2"}, study_uid="1.1")
    assert sops(result) == ["1.1.2.1"]
    assert run(tree, SERIES, {"PatientName": "b^b"}, study_uid="1.1").items == []


def test_invalid_path_uid_is_refused() -> None:
    with pytest.raises(BadRequest, match="path"):
        query(SERIES, study_uid="1.2.x")


# -- returned attributes ----------------------------------------------------------------------

STUDY_KEYS = {
    "00080020", "00080030", "00080050", "00080056", "00080061", "00080090", "00081190",
    "00100010", "00100020", "00100030", "00100040", "0020000D", "00200010", "00201206",
    "00201208",
}  # fmt: skip
SERIES_KEYS = {"00080056", "00080060", "00081190", "0020000E", "00200011", "00201209"}
INSTANCE_KEYS = {"00080016", "00080018", "00080056", "00081190"}


def full_instance(study: str, series: str, sop: str, **extra: Any) -> dict[str, Any]:
    tags = {
        "00080005": attr("CS", "ISO_IR 100"),
        "00080020": attr("DA", "20240102"),
        "00080030": attr("TM", "0930"),
        "00080050": attr("SH", "ACC"),
        "00080060": attr("CS", "CT"),
        "00080090": pn("Ref^Doc"),
        "0008103E": attr("LO", "Series"),
        "00081030": attr("LO", "Study"),
        "00100010": pn("Doe^John"),
        "00100020": attr("LO", "PID"),
        "00100030": attr("DA", "19800101"),
        "00100040": attr("CS", "M"),
        "00181030": attr("LO", "Protocol"),
        "00200010": attr("SH", "SID"),
        "00200011": attr("IS", 7),
        "00200013": attr("IS", 1),
        "00280010": attr("US", 512),
        "00280011": attr("US", 256),
        "00280100": attr("US", 16),
        "00280008": attr("IS", 1),
        "00400244": attr("DA", "20240102"),
    }
    tags.update(extra)
    return instance(study, series, sop, **tags)


def test_study_result_attributes(session: Session) -> None:
    store(
        session,
        full_instance("1.1", "1.1.1", "1.1.1.1"),
        full_instance("1.1", "1.1.1", "1.1.1.2"),
        full_instance("1.1", "1.1.2", "1.1.2.1", **{"00080060": attr("CS", "MR")}),
        instance("1.2", "1.2.1", "1.2.1.1"),
    )
    result = run(session, STUDY)
    item = result.items[0]
    assert set(item) == STUDY_KEYS | {"00080005"}
    assert list(item) == sorted(item)
    assert item["00100010"] == pn("Doe^John")
    assert item["00080030"] == attr("TM", "0930")  # as stored, not normalised
    assert values(item, "00080061") == ["CT", "MR"]
    assert first(item, "00201206") == 2
    assert first(item, "00201208") == 3
    assert first(item, "00081190") == f"{BASE_URL}/studies/1.1"
    assert first(item, "00080056") == "ONLINE"
    # Required keys of Table 10.6.3-3 are present even without a value.
    bare = result.items[1]
    assert set(bare) == STUDY_KEYS
    assert bare["00100010"] == {"vr": "PN"}
    assert first(bare, "00201208") == 1


def test_series_result_attributes(session: Session) -> None:
    store(
        session,
        full_instance("1.1", "1.1.1", "1.1.1.1"),
        full_instance("1.1", "1.1.1", "1.1.1.2"),
        full_instance("1.1", "1.1.2", "1.1.2.1"),
    )
    scoped = run(session, SERIES, study_uid="1.1").items[0]
    assert set(scoped) == SERIES_KEYS | {"00080005", "0008103E", "00400244"}
    assert first(scoped, "00201209") == 2
    assert first(scoped, "00200011") == 7
    unscoped = run(session, SERIES).items[0]
    assert set(unscoped) == set(scoped) | STUDY_KEYS
    assert first(unscoped, "00201206") == 2
    assert first(unscoped, "00201208") == 3
    assert first(unscoped, "00081190") == f"{BASE_URL}/studies/1.1/series/1.1.1"


def test_instance_result_attributes(session: Session) -> None:
    store(session, full_instance("1.1", "1.1.1", "1.1.1.1"))
    image = {"00200013", "00280008", "00280010", "00280011", "00280100", "00080005"}
    in_series = run(session, INSTANCE, study_uid="1.1", series_uid="1.1.1").items[0]
    assert set(in_series) == INSTANCE_KEYS | image
    assert first(in_series, "00280010") == 512
    in_study = run(session, INSTANCE, study_uid="1.1").items[0]
    assert set(in_study) == set(in_series) | SERIES_KEYS | {"0008103E", "00400244"}
    everywhere = run(session, INSTANCE).items[0]
    assert set(everywhere) == set(in_study) | STUDY_KEYS
    assert first(everywhere, "00201209") == 1


def test_matching_keys_are_returned(session: Session) -> None:
    store(session, full_instance("1.1", "1.1.1", "1.1.1.1"))
    item = run(session, STUDY, {"StudyDescription": "Stu*"}).items[0]
    assert item["00081030"] == attr("LO", "Study")
    scoped: dict[str, Any] = {"study_uid": "1.1", "series_uid": "1.1.1"}
    item = run(session, INSTANCE, {"SeriesDescription": ""}, **scoped).items[0]
    assert item["0008103E"] == attr("LO", "Series")
    item = run(session, INSTANCE, {"PatientSex": "M"}, **scoped).items[0]
    assert item["00100040"] == attr("CS", "M")
    assert "00100010" not in item


def test_includefield_forms(session: Session) -> None:
    store(session, full_instance("1.1", "1.1.1", "1.1.1.1"))
    params = [
        ("includefield", "StudyDescription"),
        ("includefield", "00181030,0008103e"),
        ("includefield", "PatientAge"),  # not stored: omitted
        ("includefield", "00200013"),  # instance level: never returned for a series
    ]
    item = run(session, SERIES, params).items[0]
    assert item["00081030"] == attr("LO", "Study")
    assert item["00181030"] == attr("LO", "Protocol")
    assert "00101010" not in item
    assert "00200013" not in item
    item = run(session, STUDY, [("includefield", "ProtocolName,SeriesDescription")]).items[0]
    assert "00181030" not in item  # series level: not returned for a study
    assert "0008103E" not in item


def test_includefield_all_per_level(session: Session) -> None:
    store(session, full_instance("1.1", "1.1.1", "1.1.1.1"))
    study = run(session, STUDY, {"includefield": "all"}).items[0]
    assert study["00081030"] == attr("LO", "Study")
    assert values(study, "00080062") == [CT_IMAGE]
    assert "00181030" not in study
    series = run(session, SERIES, {"includefield": "all"}).items[0]
    assert series["00181030"] == attr("LO", "Protocol")
    assert "00200013" not in series
    one = run(session, INSTANCE, {"includefield": "all"}, study_uid="1.1", series_uid="1.1.1")
    assert one.items[0]["00181030"] == attr("LO", "Protocol")
    assert one.items[0]["00100010"] == pn("Doe^John")


def test_bulk_data_is_never_returned(session: Session) -> None:
    bulk = {"vr": "OB", "BulkDataURI": "/studies/1.1/series/1.1.1/instances/1.1.1.1/bulk/7FE00010"}
    inline = {"vr": "OB", "InlineBinary": "AAEC"}
    icon = {"00281050": attr("DS", 40), "7FE00010": bulk}
    store(
        session,
        instance(
            "1.1",
            "1.1.1",
            "1.1.1.1",
            **{"7FE00010": bulk, "00420011": inline, "00880200": attr("SQ", icon)},
        ),
    )
    scoped: dict[str, Any] = {"study_uid": "1.1", "series_uid": "1.1.1"}
    item = run(session, INSTANCE, {"includefield": "all"}, **scoped).items[0]
    assert "7FE00010" not in item
    assert "00420011" not in item
    assert item["00880200"]["Value"] == [{"00281050": attr("DS", 40)}]
    params = {"includefield": "7FE00010,00420011,IconImageSequence"}
    item = run(session, INSTANCE, params, **scoped).items[0]
    assert "7FE00010" not in item
    assert item["00420011"] == inline
    assert item["00880200"]["Value"] == [{"00281050": attr("DS", 40)}]


def test_private_includefield_brings_its_creator(session: Session) -> None:
    private = {"00090010": attr("LO", "ACME"), "00091001": attr("LO", "secret")}
    store(session, instance("1.1", "1.1.1", "1.1.1.1", **private))
    item = run(session, INSTANCE, {"includefield": "00091001"}).items[0]
    assert item["00091001"] == attr("LO", "secret")
    assert item["00090010"] == attr("LO", "ACME")


def test_computed_counts_over_several_series_and_instances(session: Session) -> None:
    datasets = [
        instance("1.1", "1.1.1", **{"00080060": attr("CS", "CT"), "00100020": attr("LO", "P")}),
        instance("1.1", "1.1.1", **{"00080060": attr("CS", "CT"), "00100020": attr("LO", "P")}),
        instance("1.1", "1.1.1", **{"00080060": attr("CS", "CT"), "00100020": attr("LO", "P")}),
        instance(
            "1.1", "1.1.2", sop_class=SR_DOCUMENT,
            **{"00080060": attr("CS", "SR"), "00100020": attr("LO", "P")},
        ),
        instance("1.1", "1.1.3", **{"00080060": attr("CS", "CT"), "00100020": attr("LO", "P")}),
        instance("1.2", "1.2.1", **{"00080060": attr("CS", "MR"), "00100020": attr("LO", "P")}),
        instance("1.3", "1.3.1", **{"00100020": attr("LO", "Q")}),
    ]  # fmt: skip
    store(session, *datasets)
    params = {"includefield": "SOPClassesInStudy,00201200,NumberOfPatientRelatedInstances"}
    result = run(session, STUDY, params)
    first_study, second, third = result.items
    assert first(first_study, "00201206") == 3
    assert first(first_study, "00201208") == 5
    assert values(first_study, "00080061") == ["CT", "SR"]
    assert values(first_study, "00080062") == sorted([CT_IMAGE, SR_DOCUMENT])
    assert first(first_study, "00201200") == 2
    assert first(first_study, "00201204") == 6
    assert first(second, "00201206") == 1
    assert first(second, "00201208") == 1
    assert first(third, "00201200") == 1
    assert third["00080061"] == {"vr": "CS"}
    series = run(session, SERIES, study_uid="1.1")
    assert [first(item, "00201209") for item in series.items] == [3, 1, 1]


# -- pagination ----------------------------------------------------------------------------


@pytest.fixture
def ten(session: Session) -> Session:
    store(session, *(study_instance(f"1.{n}") for n in range(1, 11)))
    return session


def test_limit_and_offset_page_through_a_stable_order(ten: Session) -> None:
    seen: list[str] = []
    for offset in (0, 4, 8):
        result = run(ten, STUDY, {"limit": "4", "offset": str(offset)})
        seen += studies(result)
        remaining = max(10 - offset - 4, 0)
        assert result.remaining == remaining
        if remaining:
            assert result.warnings == [
                f"There are {remaining} additional results that can be requested"
            ]
        else:
            assert result.warnings == []
    assert seen == [f"1.{n}" for n in range(1, 11)]
    assert seen == studies(run(ten, STUDY))


def test_patterns_and_ranges_page_in_insertion_order_with_exact_counts(session: Session) -> None:
    # Patterns and ranges are counted before their page is read, and a few matches are read
    # through their own index and sorted: pages must still follow insertion order.
    names = ["Doe^Ann", "Roe^Bob", "Doe^Cy", "Doe^Di", "Poe^Ed", "Doe^Flo", "Doe^Gus"]
    store(
        session,
        *(
            study_instance(
                f"1.{n}",
                **{"00100010": pn(name), "00080020": attr("DA", f"202001{n:02d}")},
            )
            for n, name in enumerate(names, start=1)
        ),
    )
    for params, expected in (
        ({"PatientName": "Doe*"}, ["1.1", "1.3", "1.4", "1.6", "1.7"]),
        ({"StudyDate": "20200102-20200106"}, ["1.2", "1.3", "1.4", "1.5", "1.6"]),
        ({"PatientName": "Doe*", "StudyDate": "20200103-"}, ["1.3", "1.4", "1.6", "1.7"]),
    ):
        seen: list[str] = []
        for offset in range(0, len(expected) + 2, 2):
            result = run(session, STUDY, {**params, "limit": "2", "offset": str(offset)})
            seen += studies(result)
            assert result.remaining == max(len(expected) - offset - 2, 0)
        assert seen == expected
    assert run(session, STUDY, {"PatientName": "Nobody*", "limit": "2"}).items == []


def test_default_limit_applies_when_none_is_given(ten: Session) -> None:
    result = run(ten, STUDY, default_limit=3)
    assert len(result.items) == 3
    assert result.remaining == 7


def test_limit_above_the_maximum_is_clipped_with_a_warning(ten: Session) -> None:
    result = run(ten, STUDY, {"limit": "50"}, max_limit=6)
    assert len(result.items) == 6
    assert result.remaining == 4
    assert len(result.warnings) == 2
    assert "exceeds the maximum of 6" in result.warnings[0]
    assert result.warnings[1] == "There are 4 additional results that can be requested"


def test_offset_past_the_end_and_zero_limit(ten: Session) -> None:
    result = run(ten, STUDY, {"offset": "20"})
    assert result.items == []
    assert result.remaining == 0
    result = run(ten, STUDY, {"limit": "0", "offset": "3"})
    assert result.items == []
    assert result.remaining == 7


def test_pagination_counts_entities_not_join_rows(modalities: Session) -> None:
    result = run(modalities, STUDY, {"ModalitiesInStudy": "CT\\MR\\SR", "limit": "1"})
    assert studies(result) == ["1.1"]
    assert result.remaining == 1


@pytest.mark.parametrize("value", ["-1", "abc", "1.5", "", "٣", "+1", "9" * 30])
@pytest.mark.parametrize("name", ["limit", "offset"])
def test_bad_limit_or_offset_is_refused(name: str, value: str) -> None:
    with pytest.raises(BadRequest, match=name):
        query(STUDY, {name: value})


# -- efficiency ----------------------------------------------------------------------------


def count_statements(engine: Engine) -> list[str]:
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    return statements


def test_searches_cost_a_fixed_number_of_queries(engine: Engine, session: Session) -> None:
    for n in range(1, 6):
        store(
            session,
            *(instance(f"1.{n}", f"1.{n}.{m}", **{"00080060": attr("CS", "CT")}) for m in (1, 2)),
        )
    statements = count_statements(engine)
    assert len(run(session, STUDY).items) == 5
    assert len(statements) == 2  # the page and one GROUP BY for counts and modalities
    statements.clear()
    assert len(run(session, STUDY, {"limit": "2"}).items) == 2
    assert len(statements) == 3  # plus the COUNT for what remains
    statements.clear()
    assert len(run(session, INSTANCE).items) == 10
    assert len(statements) == 3  # page, study facts, series counts
    statements.clear()
    assert len(run(session, SERIES, study_uid="1.1").items) == 2
    assert len(statements) == 2


def test_searches_of_one_shape_share_their_sql_and_keep_their_own_values(
    engine: Engine, session: Session
) -> None:
    """Statements are built once per shape of query and run with the values bound: a search
    must never get another search's values, whatever the cache holds."""
    store(
        session,
        *(
            study_instance(
                f"1.{n}",
                **{
                    "00080020": attr("DA", f"2020010{n}"),
                    "00100020": attr("LO", f"P{n}"),
                    "00100010": pn(f"Name{n}^Given"),
                    "00080060": attr("CS", "CT" if n % 2 else "MR"),
                },
            )
            for n in range(1, 6)
        ),
    )
    statements = count_statements(engine)
    # Pairs of searches of the same shape with different values, run twice in turn.
    pairs: list[tuple[dict[str, str], list[str], dict[str, str], list[str]]] = [
        (
            {"StudyDate": "20200101-20200102"},
            ["1.1", "1.2"],
            {"StudyDate": "20200104-20200105"},
            ["1.4", "1.5"],
        ),
        (
            {"StudyInstanceUID": "1.1,1.3"},
            ["1.1", "1.3"],
            {"StudyInstanceUID": "1.2,1.5"},
            ["1.2", "1.5"],
        ),
        ({"PatientID": "P2"}, ["1.2"], {"PatientID": "P5"}, ["1.5"]),
        ({"PatientName": "name3*"}, ["1.3"], {"PatientName": "NAME1*"}, ["1.1"]),
        (
            {"ModalitiesInStudy": "MR"},
            ["1.2", "1.4"],
            {"ModalitiesInStudy": "CT"},
            ["1.1", "1.3", "1.5"],
        ),
        (
            {"limit": "2", "offset": "0"},
            ["1.1", "1.2"],
            {"limit": "2", "offset": "3"},
            ["1.4", "1.5"],
        ),
        (
            {"limit": "1", "offset": "2"},
            ["1.3"],
            {"limit": "3", "offset": "1"},
            ["1.2", "1.3", "1.4"],
        ),
    ]
    for first_params, first_found, second_params, second_found in pairs:
        page_sql = []
        for _ in range(2):
            for params, found in ((first_params, first_found), (second_params, second_found)):
                statements.clear()
                assert studies(run(session, STUDY, params)) == found, params
                page_sql.append(next(s for s in statements if "AS study_attributes" in s))
        # The same SQL text, values apart, for every search of the shape.
        assert len(set(page_sql)) == 1, first_params
    # A list of another length expands the same statement's list parameter.
    assert studies(run(session, STUDY, {"StudyInstanceUID": "1.2,1.4,1.5"})) == [
        "1.2",
        "1.4",
        "1.5",
    ]
    # A search of another shape (the same key with a wild card) gets its own statement.
    assert studies(run(session, STUDY, {"PatientID": "P*"})) == ["1.1", "1.2", "1.3", "1.4", "1.5"]
    assert studies(run(session, STUDY, {"PatientID": "P4"})) == ["1.4"]


# -- refused queries ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["NoSuchKeyword", "0010FFF0", "patientname", "12345", "accept"])
def test_unknown_key_is_refused(name: str) -> None:
    with pytest.raises(UnsupportedQuery, match=f"unknown query key {name}"):
        query(STUDY, {name: "x"})


@pytest.mark.parametrize(
    "name", ["ProtocolName", "00181030", "RequestAttributesSequence", "00091001", "PatientAge"]
)
def test_known_attribute_that_is_no_matching_key_is_refused(name: str) -> None:
    with pytest.raises(UnsupportedQuery, match=f"{name} is not a supported matching key"):
        query(SERIES, {name: "x"})


def test_known_attribute_with_empty_value_is_a_return_key(session: Session) -> None:
    store(session, full_instance("1.1", "1.1.1", "1.1.1.1"))
    item = run(session, SERIES, {"ProtocolName": ""}).items[0]
    assert item["00181030"] == attr("LO", "Protocol")


def test_unknown_includefield_is_refused() -> None:
    with pytest.raises(UnsupportedQuery, match="includefield"):
        query(STUDY, {"includefield": "PatientName,NoSuchThing"})


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ([("PatientID", "a"), ("00100020", "b")], "more than once"),
        ([("limit", "1"), ("limit", "2")], "only once"),
        ([("fuzzymatching", "yes")], "fuzzymatching"),
        ([("emptyvaluematching", "1")], "emptyvaluematching"),
    ],
)
def test_malformed_parameters_are_refused(params: list[tuple[str, str]], message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        query(STUDY, params)


def test_multiple_value_matching_parameter_is_accepted(modalities: Session) -> None:
    params = {"ModalitiesInStudy": "US\\CT", "multiplevaluematching": "true"}
    assert studies(run(modalities, STUDY, params)) == ["1.1", "1.3"]


def test_repeated_includefield_accumulates() -> None:
    parsed = query(
        STUDY, [("includefield", "PatientAge"), ("includefield", "00101020,PatientWeight")]
    )
    assert parsed.include_tags == {"00101010", "00101020", "00101030"}
    assert not parsed.include_all


def test_parsed_query_is_reusable(session: Session) -> None:
    store(session, study_instance("1.1"), study_instance("1.2"))
    parsed = query(STUDY, {"StudyInstanceUID": "1.2"})
    for _ in range(2):
        assert studies(search(session, parsed, base_url=BASE_URL + "/")) == ["1.2"]
