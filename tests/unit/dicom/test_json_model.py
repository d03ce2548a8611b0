"""DICOM JSON model conversion (PS3.18 Annex F) checked against pydicom's ``to_json_dict``."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.data import get_charset_files, get_testdata_files
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)

from dicomweb_server.dicom.json_model import BULK_DATA_VRS, BulkValue, dataset_to_json

# pydicom warns about the invalid values these tests store on purpose.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

PIXEL_KEYS = frozenset({"7FE00010", "7FE00008", "7FE00009"})
DATA_ROOT = Path(pydicom.data.__file__).parent

# Elements of bundled files that pydicom 3.0.2 cannot convert, with our output for them.
PYDICOM_FAILURES: dict[str, dict[str, dict[str, Any]]] = {
    # Number of Frames "1A": pydicom's to_json_dict raises ValueError; F.2.3.1 lets IS be a
    # JSON string, which keeps the original text.
    "badVR.dcm": {"00280008": {"vr": "IS", "Value": ["1A"]}},
}


# --- shared helpers (also imported by test_parse) ------------------------------------------


def bundled_files() -> list[Path]:
    """Every file shipped with pydicom's test data (test_files and charset_files)."""
    with warnings.catch_warnings():  # "download failures": only local files are listed
        warnings.simplefilter("ignore")
        names = get_testdata_files("**/*") + get_charset_files("*")
    return sorted({Path(name) for name in names if Path(name).is_file()})


def is_part10(path: Path) -> bool:
    with path.open("rb") as fp:
        return fp.read(132)[128:] == b"DICM"


def bundled_part10_files() -> list[Path]:
    return [path for path in bundled_files() if is_part10(path)]


def file_id(path: Path) -> str:
    return str(path.relative_to(DATA_ROOT))


def last_segment(path: str) -> str:
    """bulk_uri for comparisons: pydicom's handler only knows the tag, not the path."""
    return path.rsplit("/", 1)[-1]


def normalise(json: dict[str, Any]) -> dict[str, Any]:
    """Apply our deliberate differences (json_model docstring) to pydicom's output."""
    out: dict[str, Any] = {}
    for key, attribute in json.items():
        if key.endswith("0000") or key.startswith("0002"):
            continue  # Group Length (F.2.2), File Meta Information
        attribute = dict(attribute)
        vr = attribute["vr"]
        if key in PIXEL_KEYS and "InlineBinary" in attribute:
            del attribute["InlineBinary"]
            attribute["BulkDataURI"] = key
        values = attribute.get("Value")
        if vr == "SQ" and values is not None:
            if values:
                attribute["Value"] = [normalise(item) for item in values]
            else:
                del attribute["Value"]  # F.2.5: an empty sequence has no Value
        elif vr == "PN" and values is not None:
            attribute["Value"] = [
                {k: v for k, v in name.items() if v} if isinstance(name, dict) else name
                for name in values
            ]
        elif values is not None and len(values) > 1:
            attribute["Value"] = [None if value == "" else value for value in values]
        out[key] = attribute
    return out


def pydicom_reference(ds: Dataset, threshold: int) -> tuple[dict[str, Any], set[str]]:
    """pydicom's JSON, element by element so one failing element does not hide the others.

    pydicom compares ``(threshold // 4) * 3`` with the value length; ours compares
    ``threshold``, so pydicom gets ``threshold // 3 * 4`` (thresholds are multiples of 3).
    """
    assert threshold % 3 == 0
    reference: dict[str, Any] = {}
    failed: set[str] = set()
    for tag in list(ds.keys()):
        key = f"{tag:08X}"
        try:
            reference[key] = ds[tag].to_json_dict(
                lambda elem: f"{elem.tag:08X}", threshold // 3 * 4
            )
        except Exception:
            failed.add(key)
    return normalise(reference), failed


def convert(
    path: Path | str,
    *,
    threshold: int = 768,
    defer_size: int | None = 1024,
    sink: Callable[[BulkValue], None] | None = None,
) -> dict[str, Any]:
    ds = pydicom.dcmread(path, defer_size=defer_size)
    return dataset_to_json(ds, bulk_data_threshold=threshold, bulk_uri=last_segment, bulk_sink=sink)


def element_at(ds: Dataset, path: str) -> Any:
    """The pydicom value at a BulkValue path such as ``00540016/0/00181072``."""
    steps = path.split("/")
    current = ds
    for tag, index in zip(steps[0:-1:2], steps[1:-1:2], strict=True):
        current = current[int(tag, 16)].value[int(index)]
    return current[int(steps[-1], 16)].value


# --- bundled files -------------------------------------------------------------------------

BUNDLED = bundled_part10_files()


@pytest.mark.parametrize(
    ("defer_size", "threshold"),
    [(None, 768), (16, 768), (1024, 0), (64, 30000)],
    ids=["eager-768", "defer16-768", "defer1024-all-bulk", "defer64-30000"],
)
@pytest.mark.parametrize("path", BUNDLED, ids=file_id)
def test_bundled_file_matches_pydicom(path: Path, defer_size: int | None, threshold: int) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference, failed = pydicom_reference(pydicom.dcmread(path), threshold)
        ours = convert(path, threshold=threshold, defer_size=defer_size)
    expected_failures = PYDICOM_FAILURES.get(path.name, {})
    assert failed == set(expected_failures)
    for key, attribute in expected_failures.items():
        assert ours.pop(key) == attribute
    assert ours == reference
    assert list(ours) == sorted(ours)  # F.2.2: ascending tag order


def test_bundled_files_are_found() -> None:
    names = {path.name for path in BUNDLED}
    assert {"CT_small.dcm", "MR_small.dcm", "chrH32.dcm", "image_dfl.dcm"} <= names
    assert len(BUNDLED) > 80


@pytest.mark.parametrize("path", BUNDLED, ids=file_id)
def test_bulk_values_point_at_the_element_bytes(path: Path) -> None:
    """Every BulkValue's file range holds exactly pydicom's value, nested ones included."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = pydicom.dcmread(path)
        if reference.file_meta.get("TransferSyntaxUID") == "1.2.840.10008.1.2.1.99":
            pytest.skip("deflated: offsets are in the inflated stream, not the file")
        sink: list[BulkValue] = []
        json = convert(path, threshold=0, defer_size=64, sink=sink.append)
    data = path.read_bytes()
    for bulk in sink:
        assert data[bulk.offset : bulk.offset + bulk.length] == element_at(reference, bulk.path)
        assert bulk.vr in BULK_DATA_VRS
    top = {bulk.path for bulk in sink if "/" not in bulk.path}
    assert top == {key for key, value in json.items() if "BulkDataURI" in value}


# --- synthetic datasets --------------------------------------------------------------------


def new_dataset() -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    return ds


def write(tmp_path: Path, ds: Dataset, transfer_syntax: str, name: str = "x.dcm") -> Path:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(transfer_syntax)
    path = tmp_path / name
    ds.save_as(path, enforce_file_format=True)
    return path


SYNTAX_IDS = ["explicit-le", "implicit-le", "explicit-be"]
SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian]


@pytest.mark.parametrize("transfer_syntax", SYNTAXES, ids=SYNTAX_IDS)
def test_deliberate_differences(tmp_path: Path, transfer_syntax: str) -> None:
    ds = new_dataset()
    ds.add_new(0x00080000, "UL", 0)  # Group Length: never in JSON (F.2.2)
    ds.add_new(0x00080008, "CS", "ORIGINAL\\\\PRIMARY")  # empty middle value
    ds.add_new(0x00100010, "PN", "=Yamada^Tarou")  # ideographic group only
    ds.add_new(0x00101001, "PN", "A^B\\\\C")  # empty middle name
    ds.add_new(0x00200013, "IS", "1.5")  # not an integer
    ds.add_new(0x00200012, "IS", "1\\\\3")
    ds.add_new(0x00281050, "DS", "NaN")  # no JSON number for it
    ds.add_new(0x00281051, "DS", "1e400\\2")  # overflows to infinity
    ds.add_new(0x00081140, "SQ", Sequence())  # empty sequence
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.SamplesPerPixel = 1, 2, 8, 1
    ds.add_new(0x7FE00010, "OB", b"\x01\x02")  # tiny Pixel Data
    json = convert(write(tmp_path, ds, transfer_syntax))

    assert "00080000" not in json
    assert json["00080008"] == {"vr": "CS", "Value": ["ORIGINAL", None, "PRIMARY"]}
    assert json["00100010"] == {"vr": "PN", "Value": [{"Ideographic": "Yamada^Tarou"}]}
    assert json["00101001"] == {
        "vr": "PN",
        "Value": [{"Alphabetic": "A^B"}, None, {"Alphabetic": "C"}],
    }
    assert json["00200013"] == {"vr": "IS", "Value": ["1.5"]}
    assert json["00200012"] == {"vr": "IS", "Value": [1, None, 3]}
    assert json["00281050"] == {"vr": "DS", "Value": ["NaN"]}
    assert json["00281051"] == {"vr": "DS", "Value": ["1e400", 2.0]}
    assert json["00081140"] == {"vr": "SQ"}
    pixel_vr = "OW" if transfer_syntax == ImplicitVRLittleEndian else "OB"
    assert json["7FE00010"] == {"vr": pixel_vr, "BulkDataURI": "7FE00010"}


@pytest.mark.parametrize("transfer_syntax", SYNTAXES, ids=SYNTAX_IDS)
def test_value_types_match_pydicom(tmp_path: Path, transfer_syntax: str) -> None:
    ds = new_dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = "Müller^Jürgen=Mueller^Juergen"
    ds.PatientID = "  leading spaces kept  "
    ds.RetrieveAETitle = " AE1 \\AE2 "
    ds.StudyDescription = "back\\slash\\values"
    ds.add_new(0x00081030, "LO", "Étude")
    ds.add_new(0x00204000, "LT", "line one\r\nline two\\not a separator  ")
    ds.add_new(0x00080090, "PN", "")  # empty: no Value
    ds.add_new(0x00281052, "DS", " -1024 ")
    ds.add_new(0x00280030, "DS", "0.5\\0.25")
    ds.add_new(0x00200011, "IS", " 7 ")
    ds.add_new(0x00280010, "US", 512)
    ds.add_new(0x00280011, "US", 256)
    ds.add_new(0x00189442, "SS", [-1, 2])
    ds.add_new(0x0040A162, "SL", [-70000, 70000])
    ds.add_new(0x00189089, "FD", [0.1, 1e300, -3.0])
    ds.add_new(0x00182043, "FL", [0.1, -2.5])
    ds.add_new(0x00280009, "AT", [0x00181063, 0x00181065])
    ds.add_new(0x00080013, "TM", "101010.123 ")
    ds.add_new(0x0008010D, "UI", "1.2.3\\4.5.6")
    ds.add_new(0x00080120, "UR", "http://example.com/a b  ")
    ds.add_new(0x00720083, "UV", [2**63 + 1, 0])
    ds.add_new(0x00720082, "SV", [-(2**62)])
    ds.add_new(0x00160008, "UC", "long\\values")
    ds.add_new(0x00420011, "OB", bytes(range(256)) * 3)  # exactly 768 bytes: inline
    ds.add_new(0x00660016, "OF", b"\0" * 772)  # 772 > 768: bulk
    ds.add_new(0x00091010, "LO", "private value")
    ds.add_new(0x00090010, "LO", "ACME 1.0")
    json = convert(write(tmp_path, ds, transfer_syntax))
    reference, failed = pydicom_reference(pydicom.dcmread(tmp_path / "x.dcm"), 768)
    assert not failed
    assert json == reference
    assert json["00100010"]["Value"] == [
        {"Alphabetic": "Müller^Jürgen", "Ideographic": "Mueller^Juergen"}
    ]
    assert json["00280009"]["Value"] == ["00181063", "00181065"]
    assert json["00420011"]["InlineBinary"]
    assert json["00660016"] == {"vr": "OF", "BulkDataURI": "00660016"}
    assert json["00281052"] == {"vr": "DS", "Value": [-1024.0]}
    assert json["00091010"]["vr"] == ("UN" if transfer_syntax == ImplicitVRLittleEndian else "LO")


def sequence(*items: Dataset, undefined: bool) -> Sequence:
    seq = Sequence(items)
    seq.is_undefined_length = undefined
    for item in items:
        item.is_undefined_length_sequence_item = undefined
    return seq


def blob(seed: int, size: int) -> bytes:
    return bytes((seed + i * 7) % 251 for i in range(size))


@pytest.mark.parametrize("transfer_syntax", SYNTAXES, ids=SYNTAX_IDS)
@pytest.mark.parametrize("undefined", [False, True], ids=["defined", "undefined"])
@pytest.mark.parametrize("defer_size", [None, 0, 64])
def test_nested_bulk_paths_and_offsets(
    tmp_path: Path, transfer_syntax: str, undefined: bool, defer_size: int | None
) -> None:
    """pydicom's value_tell is relative to a per-sequence buffer for defined lengths."""
    inner = [Dataset(), Dataset()]
    inner[0].add_new(0x00420011, "OB", blob(1, 1000))
    inner[1].add_new(0x00420011, "OB", blob(2, 1001))
    inner[1].add_new(0x00660016, "OF", blob(3, 10))  # small: inline
    middle = Dataset()
    middle.add_new(0x0008114A, "SQ", sequence(*inner, undefined=not undefined))
    middle.add_new(0x00660040, "OL", blob(4, 2000))
    outer = Dataset()
    outer.add_new(0x00081115, "SQ", sequence(middle, undefined=undefined))
    icon = Dataset()
    icon.Rows, icon.Columns, icon.SamplesPerPixel, icon.BitsAllocated = 4, 4, 1, 8
    icon.PhotometricInterpretation = "MONOCHROME2"
    icon.add_new(0x7FE00010, "OB", blob(5, 16))
    ds = new_dataset()
    ds.add_new(0x00400275, "SQ", sequence(outer, Dataset(), undefined=undefined))
    ds.add_new(0x00880200, "SQ", sequence(icon, undefined=undefined))
    ds.add_new(0x00420011, "OB", blob(6, 4000))
    path = write(tmp_path, ds, transfer_syntax)

    sink: list[BulkValue] = []
    json = convert(path, defer_size=defer_size, sink=sink.append)
    reference = pydicom.dcmread(path)
    data = path.read_bytes()
    assert {bulk.path for bulk in sink} == {
        "00400275/0/00081115/0/0008114A/0/00420011",
        "00400275/0/00081115/0/0008114A/1/00420011",
        "00400275/0/00081115/0/00660040",
        "00880200/0/7FE00010",
        "00420011",
    }
    for bulk in sink:
        value = element_at(reference, bulk.path)
        assert (bulk.length, data[bulk.offset : bulk.offset + bulk.length]) == (len(value), value)
    item = json["00400275"]["Value"][0]["00081115"]["Value"][0]["0008114A"]["Value"][1]
    assert item["00420011"]["BulkDataURI"] == "00420011"
    assert item["00660016"]["InlineBinary"]
    assert json["00400275"]["Value"][1] == {}


def test_dataset_built_in_memory_has_unknown_offsets() -> None:
    ds = new_dataset()
    ds.add_new(0x00420011, "OB", b"x" * 10)
    sink: list[BulkValue] = []
    json = dataset_to_json(ds, bulk_data_threshold=4, bulk_uri=str.lower, bulk_sink=sink.append)
    assert json["00420011"] == {"vr": "OB", "BulkDataURI": "00420011"}
    assert sink == [BulkValue("00420011", 0x00420011, "OB", -1, 10)]


def test_bulk_data_vrs_are_those_of_inline_binary() -> None:
    # PS3.18 F.2.7: InlineBinary is allowed for exactly these VRs.
    assert frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"}) == BULK_DATA_VRS
