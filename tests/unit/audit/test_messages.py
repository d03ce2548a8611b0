"""Audit message building (PS3.15 A.5.3) and validation against the A.5.1 schema."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest
from lxml import etree

from dicomweb_server.audit import messages as m
from dicomweb_server.audit.messages import ActiveParticipant, Touched, group_by_patient
from tests.audit_schema import schema, validate

TIME = datetime(2024, 5, 1, 12, 30, 15, 123456, tzinfo=UTC)
USER = ActiveParticipant(
    user_id="alice",
    requestor=True,
    alternative_user_id="alice@https://idp",
    network_access_point="10.1.2.3",
)
ARCHIVE = ActiveParticipant(
    user_id="https://pacs.example.org/dicom-web", requestor=False, user_name="dicomweb-server"
)
CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"


def touched(study: str, instance: str, patient: str = "P1", sop_class: str = CT) -> Touched:
    return Touched(
        study=study,
        patient_id=patient,
        patient_name=f"name of {patient}",
        series=study + ".1",
        sop_class=sop_class,
        sop_instance=instance,
    )


def one_group() -> m.PatientGroup:
    items = [touched("1.2.3", "1.2.3.1.1"), touched("1.2.3", "1.2.3.1.2", sop_class=MR)]
    [group] = group_by_patient(items)
    return group


def event(root: etree._Element) -> etree._Element:
    found = root.find("EventIdentification")
    assert found is not None
    return found


def code(element: etree._Element | None) -> tuple[str | None, str | None, str | None]:
    assert element is not None
    return element.get("csd-code"), element.get("codeSystemName"), element.get("originalText")


def objects(root: etree._Element) -> list[etree._Element]:
    return root.findall("ParticipantObjectIdentification")


def roles(root: etree._Element) -> list[list[str | None]]:
    return [
        [role.get("csd-code") for role in participant.findall("RoleIDCode")]
        for participant in root.findall("ActiveParticipant")
    ]


def test_application_start_and_stop() -> None:
    launcher = ActiveParticipant(user_id="ops@host", requestor=True, user_name="ops")
    for start, type_code in ((True, "110120"), (False, "110121")):
        message = m.application_activity(
            start=start, time=TIME, source_id="host", application=ARCHIVE, launcher=launcher
        )
        root = validate(message.to_xml())
        assert code(event(root).find("EventID")) == ("110100", "DCM", "Application Activity")
        assert event(root).get("EventActionCode") == "E"
        assert code(event(root).find("EventTypeCode"))[0] == type_code
        assert roles(root) == [["110150"], ["110151"]]
        assert objects(root) == []
        assert event(root).get("EventDateTime") == "2024-05-01T12:30:15.123456+00:00"


def test_instances_transferred_stow_names_one_patient_and_its_studies() -> None:
    message = m.instances_transferred(
        action="C",
        outcome=m.SUCCESS,
        time=TIME,
        source_id="host",
        sender=USER,
        receiver=ARCHIVE,
        group=one_group(),
    )
    root = validate(message.to_xml())
    assert code(event(root).find("EventID"))[0] == "110104"
    assert event(root).get("EventActionCode") == "C"
    assert event(root).get("EventOutcomeIndicator") == "0"
    # The sender (the client) is the source and the requestor; the archive receives.
    assert roles(root) == [["110153"], ["110152"]]
    sender, receiver = root.findall("ActiveParticipant")
    assert sender.get("UserID") == "alice"
    assert sender.get("AlternativeUserID") == "alice@https://idp"
    assert sender.get("UserIsRequestor") == "true"
    assert sender.get("NetworkAccessPointID") == "10.1.2.3"
    assert sender.get("NetworkAccessPointTypeCode") == "2"
    assert receiver.get("UserIsRequestor") == "false"
    study, patient = objects(root)
    assert study.get("ParticipantObjectID") == "1.2.3"
    assert (study.get("ParticipantObjectTypeCode"), study.get("ParticipantObjectTypeCodeRole")) == (
        "2",
        "3",
    )
    assert code(study.find("ParticipantObjectIDTypeCode"))[0:2] == ("110180", "DCM")
    sop_classes = study.findall("ParticipantObjectDescription/SOPClass")
    assert [(s.get("UID"), s.get("NumberOfInstances")) for s in sop_classes] == [
        (CT, "1"),
        (MR, "1"),
    ]
    assert [i.get("UID") for i in sop_classes[0].findall("Instance")] == ["1.2.3.1.1"]
    assert patient.get("ParticipantObjectID") == "P1"
    assert (
        patient.get("ParticipantObjectTypeCode"),
        patient.get("ParticipantObjectTypeCodeRole"),
    ) == ("1", "1")
    assert code(patient.find("ParticipantObjectIDTypeCode")) == (
        "2",
        "RFC-3881",
        "Patient Number",
    )
    assert patient.findtext("ParticipantObjectName") == "name of P1"


def test_retrieval_is_read_with_the_archive_as_source() -> None:
    message = m.instances_transferred(
        action="R",
        outcome=m.SUCCESS,
        time=TIME,
        source_id="host",
        sender=ARCHIVE,
        receiver=USER,
        group=one_group(),
    )
    root = validate(message.to_xml())
    assert event(root).get("EventActionCode") == "R"
    source, destination = root.findall("ActiveParticipant")
    assert source.get("UserIsRequestor") == "false"
    assert destination.get("UserID") == "alice"
    assert destination.get("UserIsRequestor") == "true"


@pytest.mark.parametrize("action", ["R", "D"])
def test_instances_accessed(action: str) -> None:
    message = m.instances_accessed(
        action=action,
        outcome=m.SUCCESS,
        time=TIME,
        source_id="host",
        participants=(USER, ARCHIVE),
        group=one_group(),
    )
    root = validate(message.to_xml())
    assert code(event(root).find("EventID"))[0] == "110103"
    assert event(root).get("EventActionCode") == action
    assert [o.get("ParticipantObjectTypeCodeRole") for o in objects(root)] == ["3", "1"]


def test_study_deleted_with_failure_description() -> None:
    message = m.study_deleted(
        outcome=m.SERIOUS_FAILURE,
        time=TIME,
        source_id="host",
        participants=(USER, ARCHIVE),
        group=one_group(),
        description="HTTP 503: the blob store is unavailable",
    )
    root = validate(message.to_xml())
    assert code(event(root).find("EventID"))[0] == "110105"
    assert event(root).get("EventActionCode") == "D"
    assert event(root).get("EventOutcomeIndicator") == "8"
    assert event(root).findtext("EventOutcomeDescription") == (
        "HTTP 503: the blob store is unavailable"
    )


def test_query_keeps_the_query_string_exactly() -> None:
    raw = b"PatientName=DOE%5E%2A&StudyDate=20200101-20201231&includefield=00081030"
    message = m.query(
        outcome=m.SUCCESS,
        time=TIME,
        source_id="host",
        requestor=USER,
        responder=ARCHIVE,
        resource="https://pacs.example.org/dicom-web/studies",
        query_string=raw,
    )
    root = validate(message.to_xml())
    assert code(event(root).find("EventID"))[0] == "110112"
    assert event(root).get("EventActionCode") == "E"
    assert roles(root) == [["110153"], ["110152"]]
    [item] = objects(root)
    assert item.get("ParticipantObjectID") == "https://pacs.example.org/dicom-web/studies"
    assert code(item.find("ParticipantObjectIDTypeCode"))[0:2] == ("12", "RFC-3881")
    assert base64.b64decode(item.findtext("ParticipantObjectQuery") or "") == raw


def test_audit_log_used() -> None:
    message = m.audit_log_used(
        outcome=m.SUCCESS,
        time=TIME,
        source_id="host",
        participants=(USER, ARCHIVE),
        log_uri="https://pacs.example.org/admin/audit",
        filters=b"patient=P1",
    )
    root = validate(message.to_xml())
    assert code(event(root).find("EventID"))[0] == "110101"
    assert event(root).get("EventActionCode") == "R"
    [item] = objects(root)
    assert (item.get("ParticipantObjectTypeCode"), item.get("ParticipantObjectTypeCodeRole")) == (
        "2",
        "13",
    )
    assert item.findtext("ParticipantObjectName") == "Security Audit Log"
    detail = item.find("ParticipantObjectDetail")
    assert detail is not None and detail.get("type") == "Filter"
    assert base64.b64decode(detail.get("value") or "") == b"patient=P1"


def test_security_alert_for_a_refused_permission() -> None:
    message = m.security_alert(
        time=TIME,
        source_id="host",
        reporter=ARCHIVE,
        performer=USER,
        subject_uri="https://pacs.example.org/dicom-web/studies/1.2.3",
        subject_name="DELETE /dicom-web/studies/1.2.3",
        alert="alice lacks the 'delete' permission for DELETE /dicom-web/studies/1.2.3",
    )
    root = validate(message.to_xml())
    assert code(event(root).find("EventID"))[0] == "110113"
    assert code(event(root).find("EventTypeCode")) == (
        "110132",
        "DCM",
        "Use of Restricted Function",
    )
    assert event(root).get("EventOutcomeIndicator") == "4"
    # A.5.3.11: the performing user is not the requestor.
    assert [p.get("UserIsRequestor") for p in root.findall("ActiveParticipant")] == [
        "false",
        "false",
    ]
    [item] = objects(root)
    detail = item.find("ParticipantObjectDetail")
    assert detail is not None and detail.get("type") == "Alert Description"
    assert b"'delete' permission" in base64.b64decode(detail.get("value") or "")


def test_user_authentication_failure() -> None:
    user = ActiveParticipant(
        user_id="unauthenticated", requestor=True, network_access_point="client.example.org"
    )
    message = m.user_authentication(
        time=TIME,
        source_id="host",
        user=user,
        node=ARCHIVE,
        description="GET /dicom-web/studies: token has expired",
    )
    root = validate(message.to_xml())
    assert code(event(root).find("EventID"))[0] == "110114"
    assert code(event(root).find("EventTypeCode"))[0] == "110122"
    assert event(root).get("EventOutcomeIndicator") == "4"
    first = root.findall("ActiveParticipant")[0]
    assert first.get("NetworkAccessPointTypeCode") == "1"  # a host name, not an address


def test_one_group_per_patient_in_first_seen_order() -> None:
    items = [
        touched("1.2.3", "1.2.3.1.1", patient="P1"),
        touched("1.2.4", "1.2.4.1.1", patient="P2"),
        touched("1.2.5", "1.2.5.1.1", patient="P1"),
        touched("1.2.3", "1.2.3.1.1", patient="P1"),  # reported twice: counted once
        Touched(study="1.2.6"),
    ]
    groups = group_by_patient(items)
    assert [g.patient.patient_id if g.patient else None for g in groups] == ["P1", "P2", None]
    assert list(groups[0].studies) == ["1.2.3", "1.2.5"]
    assert groups[0].instance_count == 2
    root = validate(
        m.instances_accessed(
            action="R",
            outcome=m.MINOR_FAILURE,
            time=TIME,
            source_id="host",
            participants=(USER,),
            group=groups[2],
        ).to_xml()
    )
    # Unknown patient: the study alone, without SOP Class description.
    [study] = objects(root)
    assert study.find("ParticipantObjectDescription") is None


def test_large_messages_count_instances_without_listing_them() -> None:
    items = [touched("1.2.3", f"1.2.3.1.{n}") for n in range(m.MAX_LISTED_INSTANCES + 1)]
    [group] = group_by_patient(items)
    root = validate(
        m.instances_accessed(
            action="R",
            outcome=m.SUCCESS,
            time=TIME,
            source_id="host",
            participants=(USER,),
            group=group,
        ).to_xml()
    )
    [sop_class] = root.findall(".//SOPClass")
    assert sop_class.get("NumberOfInstances") == str(m.MAX_LISTED_INSTANCES + 1)
    assert sop_class.findall("Instance") == []


def test_text_xml_cannot_hold_is_replaced() -> None:
    user = ActiveParticipant(user_id="eve\x00\x1b<script>", requestor=True)
    patient_items = [Touched(study="1.2.3", patient_id="P\x07", patient_name="Doe\x0c^J\u00fcrgen")]
    [group] = group_by_patient(patient_items)
    message = m.instances_accessed(
        action="R",
        outcome=m.SUCCESS,
        time=TIME,
        source_id="host\x01",
        participants=(user,),
        group=group,
    )
    root = validate(message.to_xml())
    assert root.find("ActiveParticipant").get("UserID") == "eve\ufffd\ufffd<script>"  # type: ignore[union-attr]
    assert objects(root)[1].findtext("ParticipantObjectName") == "Doe\ufffd^J\u00fcrgen"


def test_outcome_of_status() -> None:
    assert [m.outcome_of_status(s) for s in (200, 204, 304, 400, 404, 413, 500, 503)] == [
        0,
        0,
        0,
        4,
        4,
        4,
        8,
        8,
    ]


@pytest.mark.parametrize(
    "broken",
    [
        # No active participant.
        '<AuditMessage><EventIdentification EventDateTime="2024-01-01T00:00:00Z" '
        'EventOutcomeIndicator="0"><EventID csd-code="110100" codeSystemName="DCM" '
        'originalText="Application Activity"/></EventIdentification>'
        '<AuditSourceIdentification AuditSourceID="a"/></AuditMessage>',
        # An outcome the schema does not know.
        '<AuditMessage><EventIdentification EventDateTime="2024-01-01T00:00:00Z" '
        'EventOutcomeIndicator="3"><EventID csd-code="110100" codeSystemName="DCM" '
        'originalText="Application Activity"/></EventIdentification>'
        '<ActiveParticipant UserID="a" UserIsRequestor="true"/>'
        '<AuditSourceIdentification AuditSourceID="a"/></AuditMessage>',
        # A time without the schema's dateTime form.
        '<AuditMessage><EventIdentification EventDateTime="yesterday" '
        'EventOutcomeIndicator="0"><EventID csd-code="110100" codeSystemName="DCM" '
        'originalText="Application Activity"/></EventIdentification>'
        '<ActiveParticipant UserID="a" UserIsRequestor="true"/>'
        '<AuditSourceIdentification AuditSourceID="a"/></AuditMessage>',
        # A participant object with neither name nor query.
        '<AuditMessage><EventIdentification EventDateTime="2024-01-01T00:00:00Z" '
        'EventOutcomeIndicator="0"><EventID csd-code="110100" codeSystemName="DCM" '
        'originalText="Application Activity"/></EventIdentification>'
        '<ActiveParticipant UserID="a" UserIsRequestor="true"/>'
        '<AuditSourceIdentification AuditSourceID="a"/>'
        '<ParticipantObjectIdentification ParticipantObjectID="1.2">'
        '<ParticipantObjectIDTypeCode csd-code="110180" codeSystemName="DCM" '
        'originalText="Study Instance UID"/></ParticipantObjectIdentification></AuditMessage>',
    ],
)
def test_the_schema_rejects_invalid_messages(broken: str) -> None:
    assert not schema().validate(etree.fromstring(broken))


def test_markup_and_control_characters_survive_serialisation() -> None:
    # The XML is written as text, not through a tree: every value must come back unchanged
    # (newlines in attributes as character references), and the document must stay valid.
    tricky = "a&b <c> \"d\" 'e'\r\n\tf"
    user = ActiveParticipant(
        user_id=tricky, requestor=True, alternative_user_id=tricky, network_access_point="host"
    )
    group = m.PatientGroup(m.Patient(tricky, tricky), {"1.2.3": {CT: ["1.2.3.4"]}})
    message = m.instances_accessed(
        action="R",
        outcome=m.MINOR_FAILURE,
        time=TIME,
        source_id=tricky,
        participants=(user, ARCHIVE),
        group=group,
        description=tricky,
    )
    root = validate(message.to_xml())
    participant = root.find("ActiveParticipant")
    assert participant is not None
    assert participant.get("UserID") == tricky
    assert participant.get("AlternativeUserID") == tricky
    source = root.find("AuditSourceIdentification")
    assert source is not None and source.get("AuditSourceID") == tricky
    # Character data keeps tab and LF; XML parsers normalise a CR in text to LF (XML 2.11).
    description = event(root).findtext("EventOutcomeDescription")
    assert description == tricky.replace("\r\n", "\n")
    patient = objects(root)[-1]
    assert patient.get("ParticipantObjectID") == tricky
    assert patient.findtext("ParticipantObjectName") == tricky.replace("\r\n", "\n")


@pytest.mark.parametrize(
    "value",
    [
        *("1.2.840.10008.5.1.4.1.1.2", "DOE^JOHN", "127.0.0.1", ""),
        *'&<>"\r\n\t',
        *("\x00", "\x1f", "a\ud800b", "\ufffe", "J\u00fcrgen", "\U0001f600", "x&y\x01"),
    ],
)
def test_attribute_values_needing_no_work_are_kept_and_the_rest_escaped(value: str) -> None:
    # Values are returned untouched only when neither escaping nor replacement applies; the
    # result always equals the full treatment (replace what XML cannot hold, then escape).
    expected = value
    for char, entity in m._ATTRIBUTE_ESCAPES:
        expected = expected.replace(char, entity)
    expected = m.xml_text(expected)
    assert m._attribute_text(value) == expected
    if m.xml_text(value) == value:
        assert m._attribute(value) == expected
    root = etree.fromstring(f'<e a="{m._attribute_text(value)}" />'.encode())
    assert root.get("a") == m.xml_text(value)


def test_empty_elements_are_written_in_short_form() -> None:
    group = m.PatientGroup(m.Patient("", ""), {"1.2.3": {CT: []}})
    message = m.instances_accessed(
        action="R",
        outcome=m.SUCCESS,
        time=TIME,
        source_id="host",
        participants=(USER, ARCHIVE),
        group=group,
    )
    text = message.to_xml()
    validate(text)
    assert "<ParticipantObjectName />" in text
    assert f'<SOPClass UID="{CT}" NumberOfInstances="0" />' in text
