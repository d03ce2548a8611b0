"""DICOM audit messages (PS3.15 A.5): the XML of the DICOM Audit Message Schema.

The model mirrors the schema (A.5.1) element for element; the builders below fill it in as
the event-specific tables of A.5.3 require for the events this archive reports:

=======================  ==========================================  ======================
Event (EventID)          Reported for                                EventActionCode
=======================  ==========================================  ======================
110100 App. Activity     server start (110120) and stop (110121)     E
110101 Audit Log Used    reading the audit trail (HTTP and CLI)      R
110103 Instances Acc.    metadata, bulk data, frames, rendered,      R; D for series and
                         thumbnails; DELETE of series / instances    instance DELETE
110104 Instances Trans.  STOW-RS (receiver), WADO-RS retrieval       C / R (STOW), R
110105 Study Deleted     DELETE of a study                           D
110112 Query             QIDO-RS                                     E
110113 Security Alert    403: a valid token without the permission   E (type 110132)
110114 User Auth.        401: no valid access token                  E (type 110122)
=======================  ==========================================  ======================

Messages about instances name exactly one patient (A.5.3.6-8): a request that touched
several patients' studies produces one message per patient.
"""

from __future__ import annotations

import base64
import functools
import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

#: SOP Instance UIDs are listed in a message when it names at most this many instances;
#: beyond that only the count per SOP Class is given (the note to A.5.2 on message size).
MAX_LISTED_INSTANCES = 1000

_NOT_XML = re.compile("[^\u0009\u000a\u000d\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def xml_text(value: str) -> str:
    """``value`` with every character XML 1.0 cannot hold replaced by U+FFFD."""
    return _NOT_XML.sub("\ufffd", value)


#: What an attribute value may need: a character XML cannot hold or one that is escaped.
#: Nearly every value (UIDs, IDs, addresses, codes) has none and is returned as it is.
_ATTRIBUTE_WORK = re.compile(
    '[&<>"\r\n\t]|[^\u0009\u000a\u000d\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]'
)


@dataclass(frozen=True, slots=True)
class Code:
    """A coded value (CodedValueType): code, coding scheme, meaning."""

    code: str
    system: str
    meaning: str


# --- Event IDs (CID 400), event types (CID 401, 403), roles (CID 402), ID types -------------
APPLICATION_ACTIVITY = Code("110100", "DCM", "Application Activity")
AUDIT_LOG_USED = Code("110101", "DCM", "Audit Log Used")
INSTANCES_ACCESSED = Code("110103", "DCM", "DICOM Instances Accessed")
INSTANCES_TRANSFERRED = Code("110104", "DCM", "DICOM Instances Transferred")
STUDY_DELETED = Code("110105", "DCM", "DICOM Study Deleted")
QUERY = Code("110112", "DCM", "Query")
SECURITY_ALERT = Code("110113", "DCM", "Security Alert")
USER_AUTHENTICATION = Code("110114", "DCM", "User Authentication")

APPLICATION_START = Code("110120", "DCM", "Application Start")
APPLICATION_STOP = Code("110121", "DCM", "Application Stop")
LOGIN = Code("110122", "DCM", "Login")
USE_OF_RESTRICTED_FUNCTION = Code("110132", "DCM", "Use of Restricted Function")

ROLE_APPLICATION = Code("110150", "DCM", "Application")
ROLE_APPLICATION_LAUNCHER = Code("110151", "DCM", "Application Launcher")
ROLE_DESTINATION = Code("110152", "DCM", "Destination Role ID")
ROLE_SOURCE = Code("110153", "DCM", "Source Role ID")

ID_PATIENT_NUMBER = Code("2", "RFC-3881", "Patient Number")
ID_URI = Code("12", "RFC-3881", "URI")
ID_STUDY_INSTANCE_UID = Code("110180", "DCM", "Study Instance UID")

EVENTS = {
    code.code: code
    for code in (
        APPLICATION_ACTIVITY,
        AUDIT_LOG_USED,
        INSTANCES_ACCESSED,
        INSTANCES_TRANSFERRED,
        STUDY_DELETED,
        QUERY,
        SECURITY_ALERT,
        USER_AUTHENTICATION,
    )
}

# EventOutcomeIndicator (A.5.2)
SUCCESS, MINOR_FAILURE, SERIOUS_FAILURE, MAJOR_FAILURE = 0, 4, 8, 12

# ParticipantObjectTypeCode and ParticipantObjectTypeCodeRole (A.5.1.2.2)
PERSON, SYSTEM_OBJECT = "1", "2"
ROLE_PATIENT, ROLE_REPORT, ROLE_SECURITY_RESOURCE, ROLE_QUERY = "1", "3", "13", "24"

#: Audit Source Type Code (A.5.1.2.1): "Application Server process tier in a multi-tier
#: system" - the archive serves the DICOMweb API.
SOURCE_TYPE_APPLICATION_SERVER = "4"


def outcome_of_status(status: int) -> int:
    """The EventOutcomeIndicator of an HTTP status: 4xx minor, 5xx serious failure."""
    if status < 400:
        return SUCCESS
    return MINOR_FAILURE if status < 500 else SERIOUS_FAILURE


@dataclass(frozen=True, slots=True)
class ActiveParticipant:
    """A user, process or node taking part in the event (ActiveParticipant)."""

    user_id: str
    requestor: bool
    alternative_user_id: str | None = None
    user_name: str | None = None
    roles: tuple[Code, ...] = ()
    network_access_point: str | None = None

    @property
    def network_access_point_type(self) -> str | None:
        """1 = machine name, 2 = IP address (A.5.1)."""
        if self.network_access_point is None:
            return None
        return _access_point_type(self.network_access_point)


# One client address makes many requests: parse each once.
@functools.lru_cache(maxsize=1024)
def _access_point_type(address: str) -> str:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return "1"
    return "2"


@dataclass(frozen=True, slots=True)
class SopClass:
    """SOP Class of a study object with how many of its instances were involved."""

    uid: str
    count: int
    instances: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ParticipantObject:
    """ParticipantObjectIdentification: a patient, study, query or resource."""

    object_id: str
    id_type: Code
    type_code: str
    role: str
    name: str | None = None
    query: bytes | None = None
    details: tuple[tuple[str, bytes], ...] = ()
    sop_classes: tuple[SopClass, ...] = ()


@dataclass(frozen=True, slots=True)
class AuditMessage:
    """One DICOM audit message; `to_xml` gives its schema-valid serialisation."""

    event: Code
    action: str | None
    time: datetime
    outcome: int
    source_id: str
    participants: tuple[ActiveParticipant, ...]
    objects: tuple[ParticipantObject, ...] = ()
    event_types: tuple[Code, ...] = ()
    outcome_description: str | None = None
    source_type: str = SOURCE_TYPE_APPLICATION_SERVER

    def to_xml(self) -> str:
        """The message as the DICOM Audit Message Schema's XML, one string.

        Written straight into a list of strings rather than through an ElementTree: the
        tree cost a third of a millisecond per message, paid before every audited response.
        The output is what ``ElementTree.tostring`` gives for the same elements (attribute
        order, escaping, ``<empty />`` form), so stored records keep their form.
        """
        out: list[str] = ["<AuditMessage><EventIdentification"]
        if self.action is not None:
            out.append(f' EventActionCode="{_attribute(self.action)}"')
        out.append(
            f' EventDateTime="{self.time.isoformat()}" EventOutcomeIndicator="{self.outcome}">'
        )
        _code(out, "EventID", self.event)
        for event_type in self.event_types:
            _code(out, "EventTypeCode", event_type)
        if self.outcome_description:
            out.append("<EventOutcomeDescription>")
            out.append(_text(xml_text(self.outcome_description)))
            out.append("</EventOutcomeDescription>")
        out.append("</EventIdentification>")
        for participant in self.participants:
            _participant(out, participant)
        out.append(
            f'<AuditSourceIdentification AuditSourceID="{_attribute_text(self.source_id)}">'
            f'<AuditSourceTypeCode csd-code="{_attribute(self.source_type)}" />'
            "</AuditSourceIdentification>"
        )
        for item in self.objects:
            _object(out, item)
        out.append("</AuditMessage>")
        return "".join(out)


_ATTRIBUTE_ESCAPES = (
    ("&", "&amp;"),
    ("<", "&lt;"),
    (">", "&gt;"),
    ('"', "&quot;"),
    ("\r", "&#13;"),
    ("\n", "&#10;"),
    ("\t", "&#09;"),
)


def _attribute(value: str) -> str:
    """An attribute value escaped as ElementTree escapes it (newlines kept as references)."""
    if _ATTRIBUTE_WORK.search(value) is None:
        return value
    for char, entity in _ATTRIBUTE_ESCAPES:
        if char in value:
            value = value.replace(char, entity)
    return value


def _attribute_text(value: str) -> str:
    """Free text (a user, a UID, a host name) as an attribute value: characters XML cannot
    hold replaced, then escaped; one search when there is nothing to do, as is usual."""
    if _ATTRIBUTE_WORK.search(value) is None:
        return value
    return _attribute(xml_text(value))


def _text(value: str) -> str:
    """Character data escaped as ElementTree escapes it."""
    if "&" in value:
        value = value.replace("&", "&amp;")
    if "<" in value:
        value = value.replace("<", "&lt;")
    if ">" in value:
        value = value.replace(">", "&gt;")
    return value


def _text_element(out: list[str], tag: str, text: str) -> None:
    # ElementTree writes an element with empty text in its short form.
    out.append(f"<{tag}>{_text(text)}</{tag}>" if text else f"<{tag} />")


def _code(out: list[str], tag: str, code: Code) -> None:
    out.append(_code_element(tag, code))


# Codes are a few constants (CID 400-403 and the ID types): each element is written once.
@functools.lru_cache(maxsize=256)
def _code_element(tag: str, code: Code) -> str:
    meaning = _attribute(code.meaning)
    return (
        f'<{tag} csd-code="{_attribute(code.code)}" codeSystemName="{_attribute(code.system)}"'
        f' displayName="{meaning}" originalText="{meaning}" />'
    )


def _participant(out: list[str], participant: ActiveParticipant) -> None:
    out.append(f'<ActiveParticipant UserID="{_attribute_text(participant.user_id)}"')
    if participant.alternative_user_id is not None:
        out.append(f' AlternativeUserID="{_attribute_text(participant.alternative_user_id)}"')
    if participant.user_name is not None:
        out.append(f' UserName="{_attribute_text(participant.user_name)}"')
    out.append(f' UserIsRequestor="{"true" if participant.requestor else "false"}"')
    if participant.network_access_point is not None:
        out.append(
            f' NetworkAccessPointID="{_attribute_text(participant.network_access_point)}"'
            f' NetworkAccessPointTypeCode="{participant.network_access_point_type or "1"}"'
        )
    if not participant.roles:
        out.append(" />")
        return
    out.append(">")
    for role in participant.roles:
        _code(out, "RoleIDCode", role)
    out.append("</ActiveParticipant>")


def _object(out: list[str], item: ParticipantObject) -> None:
    out.append(
        "<ParticipantObjectIdentification"
        f' ParticipantObjectID="{_attribute_text(item.object_id)}"'
        f' ParticipantObjectTypeCode="{_attribute(item.type_code)}"'
        f' ParticipantObjectTypeCodeRole="{_attribute(item.role)}">'
    )
    _code(out, "ParticipantObjectIDTypeCode", item.id_type)
    # The schema requires a name or a query in every participant object.
    if item.query is not None:
        _text_element(out, "ParticipantObjectQuery", base64.b64encode(item.query).decode())
    else:
        _text_element(out, "ParticipantObjectName", xml_text(item.name or ""))
    for kind, value in item.details:
        out.append(
            f'<ParticipantObjectDetail type="{_attribute_text(kind)}"'
            f' value="{base64.b64encode(value).decode()}" />'
        )
    if item.sop_classes:
        out.append("<ParticipantObjectDescription>")
        for sop_class in item.sop_classes:
            out.append(
                f'<SOPClass UID="{_attribute_text(sop_class.uid)}"'
                f' NumberOfInstances="{sop_class.count}"'
            )
            if not sop_class.instances:
                out.append(" />")
                continue
            out.append(">")
            for uid in sop_class.instances:
                out.append(f'<Instance UID="{_attribute_text(uid)}" />')
            out.append("</SOPClass>")
        out.append("</ParticipantObjectDescription>")
    out.append("</ParticipantObjectIdentification>")


# --- What requests touched -------------------------------------------------------------------


class Touched(NamedTuple):
    """One instance a request involved, with its patient as far as it is known (a named
    tuple: requests over a series make hundreds)."""

    study: str
    patient_id: str | None = None
    patient_name: str | None = None
    series: str | None = None
    sop_class: str | None = None
    sop_instance: str | None = None


@dataclass(frozen=True, slots=True)
class Patient:
    patient_id: str
    name: str


@dataclass
class PatientGroup:
    """The studies (with their SOP Classes and instances) of one patient in one message."""

    patient: Patient | None
    studies: dict[str, dict[str, list[str]]] = field(default_factory=dict)

    @property
    def instance_count(self) -> int:
        return sum(len(uids) for classes in self.studies.values() for uids in classes.values())


def group_by_patient(items: Iterable[Touched]) -> list[PatientGroup]:
    """Touched instances grouped by patient, in first-seen order; unknown patient is None."""
    # Keyed by plain tuples, with a set beside the ordered lists: a series' metadata touches
    # hundreds of instances, and list membership made this quadratic.
    groups: dict[tuple[str, str] | None, PatientGroup] = {}
    seen: set[tuple[tuple[str, str] | None, str, str, str]] = set()
    for item in items:
        known = item.patient_id is not None or item.patient_name is not None
        key = (item.patient_id or "", item.patient_name or "") if known else None
        group = groups.get(key)
        if group is None:
            group = groups[key] = PatientGroup(Patient(*key) if key is not None else None)
        classes = group.studies.setdefault(item.study, {})
        if item.sop_instance is not None or item.sop_class is not None:
            sop_class = item.sop_class or ""
            uids = classes.setdefault(sop_class, [])
            if item.sop_instance is not None:
                marker = (key, item.study, sop_class, item.sop_instance)
                if marker not in seen:
                    seen.add(marker)
                    uids.append(item.sop_instance)
    return list(groups.values())


def patient_object(patient: Patient) -> ParticipantObject:
    """The patient (A.5.3.6-8): ID type (2, RFC-3881, "Patient Number"), the Patient ID."""
    return ParticipantObject(
        object_id=patient.patient_id,
        id_type=ID_PATIENT_NUMBER,
        type_code=PERSON,
        role=ROLE_PATIENT,
        name=patient.name,
    )


def study_objects(group: PatientGroup) -> list[ParticipantObject]:
    """The studies of a group (110180 Study Instance UID) with SOP Class counts."""
    listed = group.instance_count <= MAX_LISTED_INSTANCES
    objects = []
    for study, classes in group.studies.items():
        sop_classes = tuple(
            SopClass(uid, len(instances), tuple(instances) if listed else ())
            for uid, instances in classes.items()
            if uid
        )
        objects.append(
            ParticipantObject(
                object_id=study,
                id_type=ID_STUDY_INSTANCE_UID,
                type_code=SYSTEM_OBJECT,
                role=ROLE_REPORT,
                # The schema wants a name or a query; a study has no other name than its UID.
                name=study,
                sop_classes=sop_classes,
            )
        )
    return objects


def group_objects(group: PatientGroup) -> tuple[ParticipantObject, ...]:
    objects = study_objects(group)
    if group.patient is not None:
        objects.append(patient_object(group.patient))
    return tuple(objects)


# --- Event builders (A.5.3) ------------------------------------------------------------------


def application_activity(
    *,
    start: bool,
    time: datetime,
    source_id: str,
    application: ActiveParticipant,
    launcher: ActiveParticipant | None = None,
    outcome: int = SUCCESS,
) -> AuditMessage:
    """A.5.3.1: the archive started or stopped; no participant objects."""
    participants = [_with_roles(application, ROLE_APPLICATION)]
    if launcher is not None:
        participants.append(_with_roles(launcher, ROLE_APPLICATION_LAUNCHER))
    return AuditMessage(
        event=APPLICATION_ACTIVITY,
        action="E",
        time=time,
        outcome=outcome,
        source_id=source_id,
        participants=tuple(participants),
        event_types=(APPLICATION_START if start else APPLICATION_STOP,),
    )


def instances_transferred(
    *,
    action: str,
    outcome: int,
    time: datetime,
    source_id: str,
    sender: ActiveParticipant,
    receiver: ActiveParticipant,
    group: PatientGroup,
    description: str | None = None,
) -> AuditMessage:
    """A.5.3.7: instances of one patient went from ``sender`` to ``receiver``.

    ``action`` is C when the receiver did not hold them, R when it already did (or it is
    the sender reporting), U when it replaced its copies.
    """
    return AuditMessage(
        event=INSTANCES_TRANSFERRED,
        action=action,
        time=time,
        outcome=outcome,
        source_id=source_id,
        participants=(_with_roles(sender, ROLE_SOURCE), _with_roles(receiver, ROLE_DESTINATION)),
        objects=group_objects(group),
        outcome_description=description,
    )


def instances_accessed(
    *,
    action: str,
    outcome: int,
    time: datetime,
    source_id: str,
    participants: Sequence[ActiveParticipant],
    group: PatientGroup,
    description: str | None = None,
) -> AuditMessage:
    """A.5.3.6: instances of one patient were read (R) or deleted (D) in place."""
    return AuditMessage(
        event=INSTANCES_ACCESSED,
        action=action,
        time=time,
        outcome=outcome,
        source_id=source_id,
        participants=tuple(participants),
        objects=group_objects(group),
        outcome_description=description,
    )


def study_deleted(
    *,
    outcome: int,
    time: datetime,
    source_id: str,
    participants: Sequence[ActiveParticipant],
    group: PatientGroup,
    description: str | None = None,
) -> AuditMessage:
    """A.5.3.8: whole studies of one patient were deleted."""
    return AuditMessage(
        event=STUDY_DELETED,
        action="D",
        time=time,
        outcome=outcome,
        source_id=source_id,
        participants=tuple(participants),
        objects=group_objects(group),
        outcome_description=description,
    )


def query(
    *,
    outcome: int,
    time: datetime,
    source_id: str,
    requestor: ActiveParticipant,
    responder: ActiveParticipant,
    resource: str,
    query_string: bytes,
    description: str | None = None,
) -> AuditMessage:
    """A.5.3.10 for QIDO-RS.

    The query is not a C-FIND data set, so the participant object is not typed by SOP Class
    (110181) but as (12, RFC-3881, "URI"): its ID is the search resource's URL and
    ParticipantObjectQuery holds the query string exactly as received - "the query in the
    format of the protocol used" - so that the search can be repeated.
    """
    item = ParticipantObject(
        object_id=resource,
        id_type=ID_URI,
        type_code=SYSTEM_OBJECT,
        role=ROLE_REPORT,
        query=query_string,
    )
    return AuditMessage(
        event=QUERY,
        action="E",
        time=time,
        outcome=outcome,
        source_id=source_id,
        participants=(
            _with_roles(requestor, ROLE_SOURCE),
            _with_roles(responder, ROLE_DESTINATION),
        ),
        objects=(item,),
        outcome_description=description,
    )


def audit_log_used(
    *,
    outcome: int,
    time: datetime,
    source_id: str,
    participants: Sequence[ActiveParticipant],
    log_uri: str,
    filters: bytes | None = None,
    description: str | None = None,
) -> AuditMessage:
    """A.5.3.2: someone read the audit trail; the filters they used are a detail."""
    details = (("Filter", filters),) if filters else ()
    item = ParticipantObject(
        object_id=log_uri,
        id_type=ID_URI,
        type_code=SYSTEM_OBJECT,
        role=ROLE_SECURITY_RESOURCE,
        name="Security Audit Log",
        details=details,
    )
    return AuditMessage(
        event=AUDIT_LOG_USED,
        action="R",
        time=time,
        outcome=outcome,
        source_id=source_id,
        participants=tuple(participants),
        objects=(item,),
        outcome_description=description,
    )


def security_alert(
    *,
    time: datetime,
    source_id: str,
    reporter: ActiveParticipant,
    performer: ActiveParticipant,
    subject_uri: str,
    subject_name: str,
    alert: str,
    event_type: Code = USE_OF_RESTRICTED_FUNCTION,
    outcome: int = MINOR_FAILURE,
) -> AuditMessage:
    """A.5.3.11: an attempt the archive refused (minor failure: the refusal worked).

    The performing user has UserIsRequestor false, as the table requires.
    """
    item = ParticipantObject(
        object_id=subject_uri,
        id_type=ID_URI,
        type_code=SYSTEM_OBJECT,
        role=ROLE_SECURITY_RESOURCE,
        name=subject_name,
        details=(("Alert Description", alert.encode()),),
    )
    return AuditMessage(
        event=SECURITY_ALERT,
        action="E",
        time=time,
        outcome=outcome,
        source_id=source_id,
        participants=(reporter, _not_requestor(performer)),
        objects=(item,),
        event_types=(event_type,),
        outcome_description=alert,
    )


def user_authentication(
    *,
    time: datetime,
    source_id: str,
    user: ActiveParticipant,
    node: ActiveParticipant,
    description: str,
    outcome: int = MINOR_FAILURE,
) -> AuditMessage:
    """A.5.3.12: a login attempt (here: a request whose access token was refused)."""
    return AuditMessage(
        event=USER_AUTHENTICATION,
        action="E",
        time=time,
        outcome=outcome,
        source_id=source_id,
        participants=(user, node),
        event_types=(LOGIN,),
        outcome_description=description,
    )


def _with_roles(participant: ActiveParticipant, *roles: Code) -> ActiveParticipant:
    return ActiveParticipant(
        user_id=participant.user_id,
        requestor=participant.requestor,
        alternative_user_id=participant.alternative_user_id,
        user_name=participant.user_name,
        roles=roles,
        network_access_point=participant.network_access_point,
    )


def _not_requestor(participant: ActiveParticipant) -> ActiveParticipant:
    return ActiveParticipant(
        user_id=participant.user_id,
        requestor=False,
        alternative_user_id=participant.alternative_user_id,
        user_name=participant.user_name,
        roles=participant.roles,
        network_access_point=participant.network_access_point,
    )
