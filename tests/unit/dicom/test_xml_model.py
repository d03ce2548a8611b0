"""Tests for the DICOM JSON to Native DICOM Model XML conversion (PS3.19 A.1)."""

from __future__ import annotations

import base64
import copy
import math
from collections.abc import Mapping
from typing import Any

import pydicom
import pytest
from lxml import etree
from pydicom.data import get_testdata_file, get_testdata_files
from pydicom.datadict import keyword_for_tag

from dicomweb_server.dicom.xml_model import (
    NATIVE_DICOM_NAMESPACE,
    REPLACEMENT_CHARACTER,
    dataset_to_xml,
)

NS = NATIVE_DICOM_NAMESPACE
Q = f"{{{NS}}}"
XML_NS = "http://www.w3.org/XML/1998/namespace"

# fmt: off
SCHEMA_VRS = (
    "AE", "AS", "AT", "CS", "DA", "DS", "DT", "FL", "FD", "IS", "LO", "LT", "OB", "OD", "OF",
    "OL", "OV", "OW", "PN", "SH", "SL", "SQ", "SS", "ST", "SV", "TM", "UC", "UI", "UL", "UN",
    "UR", "US", "UT", "UV",
)
# fmt: on

# The normative RELAX NG schema of PS3.19 A.1.6 (2024 edition), transcribed from the compact
# syntax into the XML syntax that lxml can load. One addition: the root may carry
# xml:space="preserve", which PS3.19 Table A.1.5-1 requires but the compact schema omits.
NATIVE_DICOM_RNG = f"""\
<grammar xmlns="http://relaxng.org/ns/structure/1.0" ns="{NS}"
         datatypeLibrary="http://www.w3.org/2001/XMLSchema-datatypes">
  <start>
    <element name="NativeDicomModel">
      <optional>
        <attribute><name ns="{XML_NS}">space</name><value>preserve</value></attribute>
      </optional>
      <ref name="DicomDataSet"/>
    </element>
  </start>
  <define name="DicomDataSet">
    <zeroOrMore><ref name="DicomAttribute"/></zeroOrMore>
  </define>
  <define name="DicomAttribute">
    <element name="DicomAttribute">
      <ref name="Tag"/>
      <ref name="VR"/>
      <optional><ref name="Keyword"/></optional>
      <optional><ref name="PrivateCreator"/></optional>
      <optional>
        <choice>
          <ref name="BulkData"/>
          <oneOrMore><ref name="Value"/></oneOrMore>
          <oneOrMore><ref name="Item"/></oneOrMore>
          <oneOrMore><ref name="PersonName"/></oneOrMore>
          <ref name="InlineBinary"/>
        </choice>
      </optional>
    </element>
  </define>
  <define name="BulkData">
    <element name="BulkData"><choice><ref name="UUID"/><ref name="URI"/></choice></element>
  </define>
  <define name="Value">
    <element name="Value"><ref name="Number"/><data type="string"/></element>
  </define>
  <define name="InlineBinary">
    <element name="InlineBinary"><data type="base64Binary"/></element>
  </define>
  <define name="Item">
    <element name="Item"><ref name="Number"/><ref name="DicomDataSet"/></element>
  </define>
  <define name="PersonName">
    <element name="PersonName">
      <ref name="Number"/>
      <optional><element name="Alphabetic"><ref name="NameComponents"/></element></optional>
      <optional><element name="Ideographic"><ref name="NameComponents"/></element></optional>
      <optional><element name="Phonetic"><ref name="NameComponents"/></element></optional>
    </element>
  </define>
  <define name="NameComponents">
    <optional><element name="FamilyName"><data type="string"/></element></optional>
    <optional><element name="GivenName"><data type="string"/></element></optional>
    <optional><element name="MiddleName"><data type="string"/></element></optional>
    <optional><element name="NamePrefix"><data type="string"/></element></optional>
    <optional><element name="NameSuffix"><data type="string"/></element></optional>
  </define>
  <define name="Keyword">
    <attribute name="keyword"><data type="token"/></attribute>
  </define>
  <define name="Tag">
    <attribute name="tag">
      <data type="string">
        <param name="minLength">8</param>
        <param name="maxLength">8</param>
        <param name="pattern">[0-9A-F]{{8}}</param>
      </data>
    </attribute>
  </define>
  <define name="VR">
    <attribute name="vr">
      <choice>
        {"".join(f"<value>{vr}</value>" for vr in SCHEMA_VRS)}
      </choice>
    </attribute>
  </define>
  <define name="PrivateCreator">
    <attribute name="privateCreator"><data type="string"/></attribute>
  </define>
  <define name="UUID"><attribute name="uuid"><data type="string"/></attribute></define>
  <define name="URI"><attribute name="uri"><data type="anyURI"/></attribute></define>
  <define name="Number">
    <attribute name="number"><data type="positiveInteger"/></attribute>
  </define>
</grammar>
"""
SCHEMA = etree.RelaxNG(etree.fromstring(NATIVE_DICOM_RNG.encode()))


def bundled_file(name: str) -> str:
    """Path of a file bundled with pydicom (no download: these ship in the wheel)."""
    path = get_testdata_file(name) or next(iter(get_testdata_files(name)), None)
    assert isinstance(path, str), name
    return path


TEST_FILES = [bundled_file(name) for name in ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm")]
TEST_FILES.append(get_testdata_files("test-SR.dcm")[0])  # an SR, found by pattern


def convert(dataset: Mapping[str, Any]) -> etree._Element:
    """Convert, check the document against the PS3.19 schema, and return its root."""
    document = dataset_to_xml(dataset)
    assert document.startswith(
        b'<?xml version="1.0" encoding="UTF-8"?>\n<NativeDicomModel xmlns="' + NS.encode() + b'"'
    )
    root = etree.fromstring(document)  # strict parser: any ill-formed output raises
    SCHEMA.assertValid(root)
    return root


def attributes(parent: etree._Element) -> list[etree._Element]:
    return list(parent.iterchildren(f"{Q}DicomAttribute"))


def attribute(parent: etree._Element, tag: str) -> etree._Element:
    found = [a for a in attributes(parent) if a.get("tag") == tag]
    assert len(found) == 1, f"expected one DicomAttribute tag={tag}, found {len(found)}"
    return found[0]


def values(element: etree._Element) -> list[str | None]:
    found = element.findall(f"{Q}Value")
    assert [v.get("number") for v in found] == [str(n) for n in range(1, len(found) + 1)]
    return [v.text for v in found]


def pn_groups(person_name: etree._Element) -> dict[str, dict[str, str]]:
    groups: dict[str, dict[str, str]] = {}
    for group in person_name:
        groups[etree.QName(group).localname] = {
            etree.QName(component).localname: component.text or "" for component in group
        }
    return groups


# --- document level ---------------------------------------------------------------------


def test_empty_dataset_is_a_complete_document() -> None:
    document = dataset_to_xml({})
    assert document == (
        b'<?xml version="1.0" encoding="UTF-8"?>\n'
        b'<NativeDicomModel xmlns="http://dicom.nema.org/PS3.19/models/NativeDICOM"'
        b' xml:space="preserve"></NativeDicomModel>'
    )
    root = etree.fromstring(document)
    assert root.tag == f"{Q}NativeDicomModel"
    assert root.get(f"{{{XML_NS}}}space") == "preserve"
    SCHEMA.assertValid(root)


def test_attributes_in_ascending_tag_order_with_keywords() -> None:
    dataset = {
        "00200013": {"vr": "IS", "Value": [3]},
        "00080060": {"vr": "CS", "Value": ["CT"]},
        "7FE00010": {"vr": "OW", "BulkDataURI": "http://x/pixels"},
        "0020000d": {"vr": "UI", "Value": ["1.2.3"]},  # lowercase key is normalised
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^John"}]},
    }
    root = convert(dataset)
    found = [(a.get("tag"), a.get("vr"), a.get("keyword")) for a in attributes(root)]
    assert found == [
        ("00080060", "CS", "Modality"),
        ("00100010", "PN", "PatientName"),
        ("0020000D", "UI", "StudyInstanceUID"),
        ("00200013", "IS", "InstanceNumber"),
        ("7FE00010", "OW", "PixelData"),
    ]
    assert all(a.get("privateCreator") is None for a in attributes(root))


def test_keyword_for_repeating_group_and_none_for_unknown_tag() -> None:
    root = convert(
        {
            "60023000": {"vr": "OW", "BulkDataURI": "http://x/overlay"},
            "0008FFFE": {"vr": "LO", "Value": ["mystery"]},
        }
    )
    assert attribute(root, "60023000").get("keyword") == "OverlayData"
    unknown = attribute(root, "0008FFFE")
    assert "keyword" not in unknown.attrib
    assert values(unknown) == ["mystery"]


def test_group_length_attributes_are_not_written() -> None:
    root = convert(
        {
            "00080000": {"vr": "UL", "Value": [42]},
            "00090000": {"vr": "UL", "Value": [12]},
            "00080060": {"vr": "CS", "Value": ["MR"]},
        }
    )
    assert [a.get("tag") for a in attributes(root)] == ["00080060"]


# --- values by VR family ------------------------------------------------------------------


def test_person_name_with_three_groups() -> None:
    root = convert(
        {
            "00100010": {
                "vr": "PN",
                "Value": [
                    {
                        "Alphabetic": "Yamada^Tarou",
                        "Ideographic": "山田^太郎",
                        "Phonetic": "やまだ^たろう",
                    }
                ],
            }
        }
    )
    element = attribute(root, "00100010")
    (person_name,) = element.findall(f"{Q}PersonName")
    assert person_name.get("number") == "1"
    assert [etree.QName(g).localname for g in person_name] == [
        "Alphabetic",
        "Ideographic",
        "Phonetic",
    ]
    assert pn_groups(person_name) == {
        "Alphabetic": {"FamilyName": "Yamada", "GivenName": "Tarou"},
        "Ideographic": {"FamilyName": "山田", "GivenName": "太郎"},
        "Phonetic": {"FamilyName": "やまだ", "GivenName": "たろう"},
    }
    assert element.find(f"{Q}Value") is None  # Value is not used for PN (Table A.1.5-2)


def test_person_name_components_multiple_values_and_empty_values() -> None:
    root = convert(
        {
            "00081060": {
                "vr": "PN",
                "Value": [
                    {"Alphabetic": "Adams^John Robert Quincy^^Rev.^B.A. M.Div."},
                    None,
                    {"Alphabetic": "Morrison-Jones^Susan^^^Ph.D., Chief Executive Officer"},
                    {"Alphabetic": "Doe^John^Q^Dr^Jr^extra"},
                    {"Alphabetic": "Wang^XiaoDong=王^小東="},
                    {"Alphabetic": "^^^^"},
                    "Smith^Jo",  # plain DICOM string form is accepted too
                ],
            }
        }
    )
    names = attribute(root, "00081060").findall(f"{Q}PersonName")
    assert [n.get("number") for n in names] == ["1", "2", "3", "4", "5", "6", "7"]
    assert pn_groups(names[0]) == {
        "Alphabetic": {
            "FamilyName": "Adams",
            "GivenName": "John Robert Quincy",
            "NamePrefix": "Rev.",
            "NameSuffix": "B.A. M.Div.",
        }
    }
    assert len(names[1]) == 0  # null value keeps its position
    assert pn_groups(names[2]) == {
        "Alphabetic": {
            "FamilyName": "Morrison-Jones",
            "GivenName": "Susan",
            "NameSuffix": "Ph.D., Chief Executive Officer",
        }
    }
    # A sixth component (invalid DICOM) is kept in NameSuffix rather than lost.
    assert pn_groups(names[3])["Alphabetic"] == {
        "FamilyName": "Doe",
        "GivenName": "John",
        "MiddleName": "Q",
        "NamePrefix": "Dr",
        "NameSuffix": "Jr^extra",
    }
    # The JSON object form with '=' inside the Alphabetic group is not re-split.
    assert pn_groups(names[4])["Alphabetic"]["GivenName"] == "XiaoDong=王"
    assert len(names[5]) == 0
    assert pn_groups(names[6]) == {"Alphabetic": {"FamilyName": "Smith", "GivenName": "Jo"}}


def test_person_name_string_form_with_groups() -> None:
    root = convert({"00100010": {"vr": "PN", "Value": ["Yamada^Tarou=山田^太郎=やまだ^たろう"]}})
    (person_name,) = attribute(root, "00100010").findall(f"{Q}PersonName")
    assert pn_groups(person_name)["Phonetic"] == {"FamilyName": "やまだ", "GivenName": "たろう"}
    root = convert({"00100010": {"vr": "PN", "Value": ["=山田^太郎"]}})
    (person_name,) = attribute(root, "00100010").findall(f"{Q}PersonName")
    assert list(pn_groups(person_name)) == ["Ideographic"]


def test_multi_valued_strings_keep_empty_values() -> None:
    root = convert(
        {
            "00080008": {"vr": "CS", "Value": ["MPG", None, "XR3"]},
            "00081090": {"vr": "LO", "Value": ["  padded  "]},
            "00180015": {"vr": "CS", "Value": [""]},
        }
    )
    assert values(attribute(root, "00080008")) == ["MPG", None, "XR3"]
    assert values(attribute(root, "00081090")) == ["  padded  "]
    assert values(attribute(root, "00180015")) == [None]


def test_numbers_are_decimal_text() -> None:
    root = convert(
        {
            "00280010": {"vr": "US", "Value": [512, 0]},
            "00281052": {"vr": "DS", "Value": [-1024, 0.1, 5.0, 1e-07, 2.5e20]},
            "00200013": {"vr": "IS", "Value": [-3]},
            "00189219": {"vr": "FD", "Value": [0.30000000000000004, math.pi]},
            "00186024": {"vr": "FL", "Value": [math.nan, math.inf, -math.inf, -0.0]},
            "00101030": {"vr": "DS", "Value": ["70.50"]},  # DS kept as its string form
            "00660040": {"vr": "UV", "Value": [2**64 - 1]},
            "00660041": {"vr": "SV", "Value": [-(2**63), "9007199254740993"]},
            "00280106": {"vr": "SS", "Value": [-32768]},
            "00189089": {"vr": "FD", "Value": [True]},
        }
    )
    assert values(attribute(root, "00280010")) == ["512", "0"]
    ds = values(attribute(root, "00281052"))
    assert ds == ["-1024", "0.1", "5.0", "1e-07", "2.5e+20"]
    assert [float(v or "") for v in ds] == [-1024, 0.1, 5.0, 1e-07, 2.5e20]
    assert values(attribute(root, "00200013")) == ["-3"]
    fd = values(attribute(root, "00189219"))
    assert [float(v or "") for v in fd] == [0.30000000000000004, math.pi]  # round-trip exact
    assert values(attribute(root, "00186024")) == ["NaN", "INF", "-INF", "-0.0"]
    assert values(attribute(root, "00101030")) == ["70.50"]
    assert values(attribute(root, "00660040")) == ["18446744073709551615"]
    assert values(attribute(root, "00660041")) == ["-9223372036854775808", "9007199254740993"]
    assert values(attribute(root, "00280106")) == ["-32768"]
    assert values(attribute(root, "00189089")) == ["1"]


def test_attribute_tag_values_are_eight_uppercase_hex_digits() -> None:
    root = convert({"00209165": {"vr": "AT", "Value": ["00100010", "0020000d", 0x00280010]}})
    assert values(attribute(root, "00209165")) == ["00100010", "0020000D", "00280010"]


def test_empty_attributes_have_no_content() -> None:
    dataset = {
        "00080050": {"vr": "SH"},
        "00080090": {"vr": "PN"},
        "00081110": {"vr": "SQ", "Value": []},
        "00100020": {"vr": "LO", "Value": []},
        "00431028": {"vr": "OB"},
        "00181000": {"vr": "LO", "InlineBinary": ""},
    }
    root = convert(dataset)
    found = attributes(root)
    assert [a.get("tag") for a in found] == sorted(dataset)
    for element in found:
        assert len(element) == 0
        assert element.text is None


def test_nested_sequences_with_empty_items() -> None:
    root = convert(
        {
            "0040A730": {
                "vr": "SQ",
                "Value": [
                    {},
                    {
                        "0040A040": {"vr": "CS", "Value": ["CONTAINER"]},
                        "0040A730": {
                            "vr": "SQ",
                            "Value": [
                                {"0040A160": {"vr": "UT", "Value": ["deep"]}},
                                {},
                                {"0040A730": {"vr": "SQ", "Value": []}},
                            ],
                        },
                    },
                    None,
                ],
            }
        }
    )
    outer = attribute(root, "0040A730")
    assert outer.get("keyword") == "ContentSequence"
    items = outer.findall(f"{Q}Item")
    assert [i.get("number") for i in items] == ["1", "2", "3"]
    assert len(items[0]) == 0 and len(items[2]) == 0
    assert values(attribute(items[1], "0040A040")) == ["CONTAINER"]
    inner_items = attribute(items[1], "0040A730").findall(f"{Q}Item")
    assert [i.get("number") for i in inner_items] == ["1", "2", "3"]
    assert values(attribute(inner_items[0], "0040A160")) == ["deep"]
    assert len(inner_items[1]) == 0
    innermost = attribute(inner_items[2], "0040A730")
    assert innermost.get("vr") == "SQ" and len(innermost) == 0


def test_bulk_data_uri() -> None:
    uri = "http://x/studies/1.2/series/3.4/instances/5.6/bulk/7FE00010?a=1&b=<2>"
    root = convert({"7FE00010": {"vr": "OW", "BulkDataURI": uri}})
    element = attribute(root, "7FE00010")
    (bulk,) = list(element)
    assert bulk.tag == f"{Q}BulkData"
    assert dict(bulk.attrib) == {"uri": uri}
    assert b"a=1&amp;b=&lt;2&gt;" in dataset_to_xml({"7FE00010": {"vr": "OW", "BulkDataURI": uri}})


def test_inline_binary() -> None:
    payload = bytes(range(256)) * 3
    encoded = base64.b64encode(payload).decode()
    root = convert(
        {
            "00282000": {"vr": "OB", "InlineBinary": encoded},
            "00660023": {"vr": "OF", "InlineBinary": base64.b64encode(b"\0\0\x80?").decode()},
        }
    )
    (inline,) = list(attribute(root, "00282000"))
    assert inline.tag == f"{Q}InlineBinary"
    assert base64.b64decode(inline.text or "") == payload
    assert base64.b64decode(attribute(root, "00660023")[0].text or "") == b"\0\0\x80?"


def test_private_attributes_carry_private_creator_and_lose_block_number() -> None:
    root = convert(
        {
            "00090010": {"vr": "LO", "Value": ["ACME 1.0 "]},
            "00090011": {"vr": "LO", "Value": ["OTHER"]},
            "00091001": {"vr": "LO", "Value": ["acme value"]},
            "00091002": {"vr": "US", "Value": [7]},
            "00091101": {"vr": "SQ", "Value": [{"00291010": {"vr": "LO", "Value": ["inner"]}}]},
            "00110010": {"vr": "LO"},  # empty creator: cannot be determined, kept
            "00111001": {"vr": "LO", "Value": ["orphan, empty creator"]},
            "00131001": {"vr": "UN", "InlineBinary": "AQI="},  # no creator at all
            "00190001": {"vr": "LO", "Value": ["odd group below the creator range"]},
        }
    )
    found = [(a.get("tag"), a.get("privateCreator"), a.get("keyword")) for a in attributes(root)]
    assert found == [
        ("00090001", "ACME 1.0", None),
        ("00090002", "ACME 1.0", None),
        ("00090001", "OTHER", None),
        ("00110010", None, None),
        ("00111001", None, None),
        ("00131001", None, None),
        ("00190001", None, None),
    ]
    sequence = attributes(root)[2]
    assert sequence.get("vr") == "SQ"
    (item,) = sequence.findall(f"{Q}Item")
    # The creator is looked up in the item's own data set; here it has none.
    assert attribute(item, "00291010").get("privateCreator") is None


def test_private_creator_inside_sequence_item() -> None:
    root = convert(
        {
            "00081140": {
                "vr": "SQ",
                "Value": [
                    {
                        "00291018": {"vr": "CS", "Value": ["MR"]},
                        "00290010": {"vr": "LO", "Value": ["SIEMENS CSA HEADER"]},
                        "00291008": {"vr": "CS", "Value": ["IMAGE NUM 4"]},
                    }
                ],
            }
        }
    )
    (item,) = attribute(root, "00081140").findall(f"{Q}Item")
    found = [(a.get("tag"), a.get("privateCreator")) for a in attributes(item)]
    assert found == [("00290008", "SIEMENS CSA HEADER"), ("00290018", "SIEMENS CSA HEADER")]


# --- escaping -------------------------------------------------------------------------------


def test_markup_characters_are_escaped() -> None:
    text = "a & b < c > d \"quoted\" 'single' ]]> end"
    root = convert(
        {
            "00081030": {"vr": "LO", "Value": [text]},
            "00090010": {"vr": "LO", "Value": ['Q"uote & <co>\tX']},
            "00091001": {"vr": "LO", "Value": ["x"]},
        }
    )
    assert values(attribute(root, "00081030")) == [text]
    assert attributes(root)[1].get("privateCreator") == 'Q"uote & <co>\tX'


def test_line_breaks_and_tabs_are_preserved_exactly() -> None:
    text = "line 1\r\nline 2\n\tindented\rold mac  "
    root = convert({"00204000": {"vr": "LT", "Value": [text]}})
    assert values(attribute(root, "00204000")) == [text]
    assert b"&#13;" in dataset_to_xml({"00204000": {"vr": "LT", "Value": [text]}})


def test_characters_not_allowed_in_xml_are_replaced() -> None:
    text = "form\x0cfeed nul\x00 esc\x1b bad\ud800 nonchar\uffff\ufffe ok\u00e9\U0001f600"
    document = dataset_to_xml(
        {
            "00204000": {"vr": "LT", "Value": [text]},
            "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Do\x01e^Jo\x02hn"}]},
            "7FE00010": {"vr": "OW", "BulkDataURI": "http://x/\x07bell"},
        }
    )
    root = etree.fromstring(document)
    SCHEMA.assertValid(root)
    r = REPLACEMENT_CHARACTER
    assert values(attribute(root, "00204000")) == [
        f"form{r}feed nul{r} esc{r} bad{r} nonchar{r}{r} ok\u00e9\U0001f600"
    ]
    (person_name,) = attribute(root, "00100010")
    assert pn_groups(person_name) == {
        "Alphabetic": {"FamilyName": f"Do{r}e", "GivenName": f"Jo{r}hn"}
    }
    assert attribute(root, "7FE00010")[0].get("uri") == f"http://x/{r}bell"


# --- invalid input --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dataset",
    [
        {"0010001": {"vr": "LO"}},
        {"0x100010": {"vr": "LO"}},
        {"0010_0010": {"vr": "LO"}},
        {"00100010": {"Value": ["x"]}},
        {"00100010": {"vr": "US or SS", "Value": [1]}},
        {"00100010": {"vr": "lo", "Value": ["x"]}},
        {"00100010": ["not", "an", "object"]},
        {"00100010": {"vr": "LO", "Value": "not an array"}},
        {"00100010": {"vr": "LO", "Value": [{"nested": "object"}]}},
        {"00100010": {"vr": "PN", "Value": [42]}},
        {"00081140": {"vr": "SQ", "Value": ["not an item"]}},
        {"00081140": {"vr": "SQ", "Value": [{"bad": {"vr": "LO"}}]}},
        {"7FE00010": {"vr": "OW", "BulkDataURI": 42}},
    ],
)
def test_malformed_json_raises_value_error(dataset: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        dataset_to_xml(dataset)


# --- real instances --------------------------------------------------------------------------


def _creator(dataset: Mapping[str, Any], tag: int) -> str | None:
    element = dataset.get(f"{(tag >> 16):04X}00{(tag & 0xFFFF) >> 8:02X}")
    value = (element or {}).get("Value") or [None]
    return value[0].strip() or None if isinstance(value[0], str) else None


def _expected_attributes(dataset: Mapping[str, Any]) -> list[tuple[str, str | None, Any]]:
    """(written tag, privateCreator, JSON element) in document order, per PS3.19 A.1.5."""
    expected = []
    for key in sorted(dataset, key=lambda k: int(k, 16)):
        tag = int(key, 16)
        group, number = tag >> 16, tag & 0xFFFF
        creator = None
        if number == 0:
            continue
        if group % 2 and 0x10 <= number <= 0xFF and _creator(dataset, (group << 16) | number << 8):
            continue
        if group % 2 and number >= 0x1000:
            creator = _creator(dataset, tag)
            if creator:
                tag &= 0xFFFF00FF
        expected.append((f"{tag:08X}", creator, dataset[key]))
    return expected


def _pn_text(person_name: etree._Element) -> dict[str, str]:
    """Rebuild the DICOM string of each group from its component elements."""
    rebuilt = {}
    for group, components in pn_groups(person_name).items():
        parts = [
            components.get(name, "")
            for name in ("FamilyName", "GivenName", "MiddleName", "NamePrefix", "NameSuffix")
        ]
        rebuilt[group] = "^".join(parts).rstrip("^")
    return rebuilt


def assert_same_dataset(dataset: Mapping[str, Any], parent: etree._Element) -> int:
    """Check every JSON attribute and value against the XML; return how many were checked."""
    expected = _expected_attributes(dataset)
    found = attributes(parent)
    assert [(a.get("tag"), a.get("privateCreator")) for a in found] == [
        (tag, creator) for tag, creator, _ in expected
    ]
    checked = 0
    for element, (tag, creator, source) in zip(found, expected, strict=True):
        checked += 1
        vr = source["vr"]
        assert element.get("vr") == vr, tag
        if creator is None and int(tag[:4], 16) % 2 == 0:
            assert element.get("keyword", "") == keyword_for_tag(int(tag, 16)), tag
        else:
            assert element.get("keyword") is None, tag
        json_values = source.get("Value") or []
        if vr == "SQ":
            items = element.findall(f"{Q}Item")
            assert len(items) == len(json_values), tag
            assert len(element) == len(items)
            for number, (item, json_item) in enumerate(zip(items, json_values, strict=True), 1):
                assert item.get("number") == str(number)
                checked += assert_same_dataset(json_item, item)
        elif vr == "PN":
            names = element.findall(f"{Q}PersonName")
            assert len(names) == len(json_values) == len(element), tag
            for person_name, json_name in zip(names, json_values, strict=True):
                want = {g: v.rstrip("^") for g, v in (json_name or {}).items() if v.strip("^")}
                assert _pn_text(person_name) == want, tag
        elif json_values:
            texts = values(element)
            assert len(texts) == len(json_values) == len(element), tag
            for text, value in zip(texts, json_values, strict=True):
                if value is None or value == "":
                    assert text is None, tag
                elif isinstance(value, str):
                    assert text == value, tag
                else:
                    assert text is not None and float(text) == value, tag
                    assert text == (str(value) if isinstance(value, int) else repr(value))
        elif "BulkDataURI" in source:
            (bulk,) = list(element)
            assert bulk.tag == f"{Q}BulkData" and bulk.get("uri") == source["BulkDataURI"]
        elif source.get("InlineBinary"):
            (inline,) = list(element)
            assert inline.tag == f"{Q}InlineBinary" and inline.text == source["InlineBinary"]
        else:
            assert len(element) == 0, tag
    return checked


@pytest.mark.parametrize("path", TEST_FILES, ids=lambda p: p.rsplit("/", 1)[-1])
def test_pydicom_test_files_round_trip(path: str) -> None:
    dataset = pydicom.dcmread(path).to_json_dict(1024, lambda _element: "http://x/bulk")
    root = convert(dataset)
    checked = assert_same_dataset(dataset, root)
    assert checked >= 40


def test_ct_small_private_blocks_and_bulk_data() -> None:
    dataset = pydicom.dcmread(bundled_file("CT_small.dcm")).to_json_dict(
        1024, lambda _element: "http://x/bulk"
    )
    root = convert(dataset)
    assert "00090010" in dataset and "00090010" not in {a.get("tag") for a in attributes(root)}
    private = [a for a in attributes(root) if a.get("privateCreator") == "GEMS_IDEN_01"]
    assert private and all(a.get("tag", "").startswith("000900") for a in private)
    assert attribute(root, "7FE00010")[0].get("uri") == "http://x/bulk"
    assert any(len(a) and a[0].tag == f"{Q}InlineBinary" for a in attributes(root))


def test_sr_document_nesting_matches() -> None:
    dataset = pydicom.dcmread(get_testdata_files("test-SR.dcm")[0]).to_json_dict()
    root = convert(dataset)
    json_depth_items = sum(1 for _ in _walk_items(dataset))
    assert json_depth_items == len(root.findall(f".//{Q}Item")) > 10


def _walk_items(dataset: Mapping[str, Any]) -> Any:
    for element in dataset.values():
        if element["vr"] == "SQ":
            for item in element.get("Value") or []:
                yield item
                yield from _walk_items(item)


def test_does_not_modify_its_input() -> None:
    dataset = pydicom.dcmread(bundled_file("rtplan.dcm")).to_json_dict()
    before = copy.deepcopy(dataset)
    dataset_to_xml(dataset)
    assert dataset == before
