"""Parse a stored DICOM PS3.10 file once, at STOW-RS time, into everything reads need.

`parse_instance` validates the file strictly (a store must refuse what it cannot serve back,
PS3.18 Section 10.5.3) and returns the identifying UIDs, the DICOM JSON metadata (PS3.18
Annex F) with BulkDataURIs, the file location of every bulk value and the frame layout of
the Pixel Data. Reads then never parse DICOM: WADO-RS metadata is the stored JSON, bulk data
and frames are byte ranges of the stored file.

Failure codes are those of the Failure Reason (0008,1197) in a STOW-RS response (PS3.18
Section 10.5.3, PS3.4 Annex B.2.3):

* 0xC000 "Cannot understand": not a PS3.10 file, pydicom cannot parse it, it is truncated,
  the Transfer Syntax UID is missing or malformed, or the Pixel Data encoding contradicts
  the transfer syntax or its encapsulated item structure is broken; also hostile structure
  refused before pydicom reads it (`guards`): sequences nested deeper than a limit, a
  deflated data set that inflates beyond a cap.
* 0xA900 "Data Set does not match SOP Class": an identifying UID is missing or malformed,
  or the Pixel Data contradicts its describing
  attributes (shorter than Rows x Columns x Samples x Bits x Frames, frames that cannot be
  matched to Number of Frames, missing image attributes).

Elements after the Pixel Data (Data Set Trailing Padding, Digital Signatures) are kept in the
metadata like any other element.
"""

from __future__ import annotations

import os
import struct
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO, cast

import pydicom
import pydicom.filereader
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.uid import UID

from .guards import (
    DEFAULT_MAX_INFLATED_BYTES,
    DEFAULT_MAX_SEQUENCE_DEPTH,
    FileMeta,
    StructureError,
    check_nesting,
    inflate,
    read_file_meta,
)
from .json_model import BulkValue, dataset_to_json
from .pixel_layout import (
    PIXEL_DATA_TAGS,
    MalformedPixelDataError,
    PixelDataError,
    PixelLayout,
    encapsulated_layout,
    native_layout,
)
from .uids import is_valid_uid

__all__ = [
    "CANNOT_UNDERSTAND",
    "DATA_SET_DOES_NOT_MATCH_SOP_CLASS",
    "BulkValue",
    "InvalidInstance",
    "ParsedInstance",
    "parse_instance",
]

#: PS3.4 Table B.2-1 / PS3.18 Table I.2-2 Failure Reason values.
CANNOT_UNDERSTAND = 0xC000
DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xA900

DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"
# PS3.5 Annex A.1-A.3 (and the deflated A.5): Pixel Data is never encapsulated in these.
_NATIVE_TRANSFER_SYNTAXES = frozenset(
    {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"}
)

# Values up to this size are read during the parse; bigger ones are skipped (deferred) and
# only located, whatever the bulk data threshold, so Pixel Data and other bulk values beyond
# it are never read into memory. Deferred values that must be inlined are re-read one by one.
_DEFER_SIZE = 64 * 1024
_UNDEFINED_LENGTH = 0xFFFFFFFF
_PREAMBLE_AND_PREFIX = 132
# A deflated data set inflates in memory up to this size, in an anonymous file beyond.
_INFLATE_IN_MEMORY = 8 * 1024**2

_IDENTIFYING_UIDS = (
    (0x00080016, "SOP Class UID (0008,0016)"),
    (0x00080018, "SOP Instance UID (0008,0018)"),
    (0x0020000D, "Study Instance UID (0020,000D)"),
    (0x0020000E, "Series Instance UID (0020,000E)"),
)


class InvalidInstance(Exception):
    """The file cannot be stored.

    Parameters
    ----------
    failure_reason : int
        The Failure Reason (0008,1197) for the STOW-RS response (see the module docstring).
    reason : str
        A short human-readable explanation, suitable for the response's Warning header or
        (0008,1196) Warning Detail.
    """

    def __init__(self, failure_reason: int, reason: str) -> None:
        super().__init__(reason)
        self.failure_reason = failure_reason
        self.reason = reason

    def __repr__(self) -> str:
        return f"InvalidInstance(0x{self.failure_reason:04X}, {self.reason!r})"


@dataclass(frozen=True, slots=True)
class ParsedInstance:
    """Everything later reads need, extracted by one parse of a stored instance.

    Attributes
    ----------
    sop_class_uid, sop_instance_uid, study_instance_uid, series_instance_uid : str
        The validated identifying UIDs.
    transfer_syntax_uid : str
        (0002,0010) of the File Meta Information.
    metadata : dict
        DICOM JSON (PS3.18 Annex F) of the dataset without group 0002, BulkDataURIs filled by
        the ``bulk_uri`` callback.
    bulk : tuple of BulkValue
        Location of every BulkDataURI value in the stored file; empty when `deflated`.
    pixel : PixelLayout or None
        Frame layout of the top-level Pixel Data; ``None`` without Pixel Data or when
        `deflated`.
    deflated : bool
        Deflated Explicit VR Little Endian (PS3.5 Section A.5): the dataset is compressed as a
        whole, so no file offset is meaningful and reads must re-inflate the file.
    """

    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    metadata: dict[str, Any]
    bulk: tuple[BulkValue, ...]
    pixel: PixelLayout | None
    deflated: bool


def parse_instance(
    path: str | os.PathLike[str],
    *,
    bulk_data_threshold: int,
    bulk_uri: Callable[[str, str, str, str], str],
    max_sequence_depth: int = DEFAULT_MAX_SEQUENCE_DEPTH,
    max_inflated_bytes: int = DEFAULT_MAX_INFLATED_BYTES,
) -> ParsedInstance:
    """Validate and describe one stored PS3.10 file.

    Parameters
    ----------
    path : str or os.PathLike
        The stored file. It must stay in place while this runs (deferred values are re-read).
    bulk_data_threshold : int
        Binary values longer than this many bytes become BulkDataURIs (see
        `json_model.dataset_to_json`); Pixel Data always does.
    bulk_uri : callable
        ``bulk_uri(study_uid, series_uid, sop_instance_uid, element_path)`` returns the
        BulkDataURI string to store for one element.
    max_sequence_depth : int
        Most sequences an element may be nested in; deeper files are refused (0xC000)
        before pydicom, which parses sequences recursively, reads them.
    max_inflated_bytes : int
        Largest inflated size of a Deflated Explicit VR Little Endian data set; beyond it
        the file is refused (0xC000). The stream is measured in bounded chunks first, then
        inflated into memory (small data sets) or an anonymous temporary file next to `path`
        (unlinked from the start, so nothing is left behind whatever happens).

    Returns
    -------
    ParsedInstance

    Raises
    ------
    InvalidInstance
        For any file that must not be stored; see the module docstring for the codes.
    OSError
        Only if `path` itself cannot be opened (not a property of the data).
    """
    filename = os.fspath(path)
    with open(filename, "rb") as fp:
        head = fp.read(_PREAMBLE_AND_PREFIX)
        if len(head) < _PREAMBLE_AND_PREFIX or head[128:] != b"DICM":
            raise InvalidInstance(
                CANNOT_UNDERSTAND,
                "not a DICOM PS3.10 file: no 128-byte preamble followed by 'DICM'",
            )
        size = os.fstat(fp.fileno()).st_size
        meta = _file_meta(fp)
        if meta.transfer_syntax_uid == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
            # Spooled: a small data set is inflated in memory, a big one in an anonymous file.
            with tempfile.SpooledTemporaryFile(
                max_size=_INFLATE_IN_MEMORY, dir=os.path.dirname(filename) or None
            ) as spool:
                inflated = cast(BinaryIO, spool)
                ds, end, size = _read_deflated(
                    fp, filename, head, meta, inflated, max_sequence_depth, max_inflated_bytes
                )
                # Deferred values are read from the inflated copy: describe it while open.
                return _checked_describe(filename, ds, end, size, bulk_data_threshold, bulk_uri)
        _guard(
            check_nesting,
            fp,
            meta.dataset_offset,
            size,
            implicit=meta.transfer_syntax_uid == IMPLICIT_VR_LITTLE_ENDIAN,
            little=meta.transfer_syntax_uid != EXPLICIT_VR_BIG_ENDIAN,
            max_depth=max_sequence_depth,
        )
        ds = _read(fp, head, meta)
        end = fp.tell()
    return _checked_describe(filename, ds, end, size, bulk_data_threshold, bulk_uri)


def _checked_describe(
    filename: str,
    ds: FileDataset,
    end: int,
    size: int,
    bulk_data_threshold: int,
    bulk_uri: Callable[[str, str, str, str], str],
) -> ParsedInstance:
    try:
        return _describe(filename, ds, end, size, bulk_data_threshold, bulk_uri)
    except InvalidInstance:
        raise
    except Exception as exc:  # pydicom raises many types while decoding malformed values
        raise InvalidInstance(
            CANNOT_UNDERSTAND, f"cannot decode the dataset: {_brief(exc)}"
        ) from exc


def _guard(check: Callable[..., object], *args: Any, **kwargs: Any) -> None:
    """Run a structural check of `guards`, its refusal becoming a 0xC000 failure."""
    try:
        check(*args, **kwargs)
    except StructureError as exc:
        raise InvalidInstance(CANNOT_UNDERSTAND, exc.reason) from exc


def _file_meta(fp: BinaryIO) -> FileMeta:
    """Group 0002 checked without recursion, and a usable Transfer Syntax UID in it."""
    try:
        meta = read_file_meta(fp)
    except StructureError as exc:
        raise InvalidInstance(CANNOT_UNDERSTAND, exc.reason) from exc
    uid = meta.transfer_syntax_uid
    if uid is None:
        raise InvalidInstance(
            CANNOT_UNDERSTAND,
            "not a DICOM PS3.10 file: File Meta Information lacks Transfer Syntax UID (0002,0010)",
        )
    if not is_valid_uid(uid):
        raise InvalidInstance(CANNOT_UNDERSTAND, f"invalid Transfer Syntax UID {uid[:80]!r}")
    return meta


def _read_deflated(
    fp: BinaryIO,
    filename: str,
    head: bytes,
    meta: FileMeta,
    inflated: BinaryIO,
    max_sequence_depth: int,
    max_inflated_bytes: int,
) -> tuple[FileDataset, int, int]:
    """Inflate the data set with a size cap, check it, then read it as pydicom would.

    pydicom's ``dcmread`` inflates the whole data set in one ``zlib.decompress`` call (a
    decompression bomb), so the inflated data set is read here with pydicom's
    ``read_dataset``, as ``dcmread`` reads it after inflating.
    """
    fp.seek(meta.dataset_offset)
    if fp.read(2) == b"\x00\x00":
        # dcmread would read these bytes as a Command Set (group 0000) before inflating.
        raise InvalidInstance(
            CANNOT_UNDERSTAND, "the deflated data set does not start with a deflate stream"
        )
    # Measured first: a bomb is refused before a byte of it is written.
    fp.seek(meta.dataset_offset)
    _guarded_inflate(fp, None, max_inflated_bytes)
    fp.seek(meta.dataset_offset)
    size = _guarded_inflate(fp, inflated, max_inflated_bytes)
    _guard(
        check_nesting,
        inflated,
        0,
        size,
        implicit=False,
        little=True,
        max_depth=max_sequence_depth,
        command_set=False,
    )
    inflated.seek(0)
    try:
        file_meta = pydicom.filereader.read_file_meta_info(filename)
        dataset = pydicom.filereader.read_dataset(
            inflated, is_implicit_VR=False, is_little_endian=True, defer_size=_DEFER_SIZE
        )
    except Exception as exc:  # as in _read
        raise InvalidInstance(CANNOT_UNDERSTAND, f"cannot parse DICOM data: {_brief(exc)}") from exc
    end = inflated.tell()
    ds = FileDataset(inflated, dataset, head[:128], file_meta, False, True)
    ds.set_original_encoding(False, True, dataset._character_set)
    return ds, end, size


def _guarded_inflate(fp: BinaryIO, inflated: BinaryIO | None, max_inflated_bytes: int) -> int:
    try:
        return inflate(fp, inflated, max_inflated_bytes)
    except StructureError as exc:
        raise InvalidInstance(CANNOT_UNDERSTAND, exc.reason) from exc


def _describe(
    filename: str,
    ds: FileDataset,
    end: int,
    size: int,
    bulk_data_threshold: int,
    bulk_uri: Callable[[str, str, str, str], str],
) -> ParsedInstance:
    transfer_syntax_uid = _transfer_syntax(ds)
    deflated = transfer_syntax_uid == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN
    # For a deflated data set, `end` and `size` are those of its inflated copy.
    _check_complete(ds, end, size)
    sop_class, sop_instance, study, series = (
        _uid(ds, tag, name) for tag, name in _IDENTIFYING_UIDS
    )
    # A Media Storage SOP Instance UID (0002,0003) that differs from (0008,0018) is tolerated:
    # such files exist in the wild (pydicom's rtplan.dcm is one), the data set's own UID
    # identifies the instance, and the bytes are kept exactly as received.

    bulk: list[BulkValue] = []
    metadata = dataset_to_json(
        ds,
        bulk_data_threshold=bulk_data_threshold,
        bulk_uri=lambda element: bulk_uri(study, series, sop_instance, element),
        bulk_sink=None if deflated else bulk.append,
    )
    # A deflated data set's Pixel Data is checked against its attributes like any other, but
    # its layout is not kept: offsets in the inflated copy mean nothing in the stored file.
    pixel = _pixel_layout(filename, ds, metadata, transfer_syntax_uid)
    if deflated:
        pixel = None
    return ParsedInstance(
        sop_class_uid=sop_class,
        sop_instance_uid=sop_instance,
        study_instance_uid=study,
        series_instance_uid=series,
        transfer_syntax_uid=transfer_syntax_uid,
        metadata=metadata,
        bulk=tuple(bulk),
        pixel=pixel,
        deflated=deflated,
    )


def _brief(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


def _not_command_set(tag: int, vr: str | None, length: int) -> bool:
    return tag >> 16 != 0x0000


def _read(fp: BinaryIO, head: bytes, meta: FileMeta) -> FileDataset:
    """Read the data set the way ``dcmread`` does, after the File Meta Information.

    ``dcmread`` would walk group 0002 again, into a dataset of its own, although
    `read_file_meta` just did and found where the data set starts and its transfer syntax:
    a sixth of the parse of a typical header. The rest is ``read_partial``'s own steps:
    Command Set elements (group 0000) first, always implicit VR little endian (PS3.7
    Section 6.3), then the data set in the encoding of its transfer syntax (PS3.5 Section
    10: explicit VR little endian unless it says otherwise; deflated data sets go through
    `_read_deflated`).
    """
    uid = meta.transfer_syntax_uid
    implicit = uid == IMPLICIT_VR_LITTLE_ENDIAN
    little = uid != EXPLICIT_VR_BIG_ENDIAN
    try:
        fp.seek(meta.dataset_offset)
        command_set = pydicom.filereader.read_dataset(
            fp, is_implicit_VR=True, is_little_endian=True, stop_when=_not_command_set
        )
        dataset = pydicom.filereader.read_dataset(
            fp, is_implicit_VR=implicit, is_little_endian=little, defer_size=_DEFER_SIZE
        )
    except Exception as exc:  # InvalidDicomError, EOFError, struct.error, OSError, ...
        raise InvalidInstance(CANNOT_UNDERSTAND, f"cannot parse DICOM data: {_brief(exc)}") from exc
    if command_set:
        dataset.update(command_set)
    file_meta = FileMetaDataset()
    file_meta.TransferSyntaxUID = UID(uid or "")
    ds = FileDataset(fp, dataset, head[:128], file_meta, implicit, little)
    ds.set_original_encoding(implicit, little, dataset._character_set)
    return ds


def _text(elem: DataElement | RawDataElement) -> str:
    """The string value of a UI element, padding removed, without converting the dataset."""
    value = elem.value
    if isinstance(value, bytes):
        return value.decode("latin-1").rstrip("\x00 ")
    if value is None:
        return ""
    return str(value).rstrip("\x00 ")


def _transfer_syntax(ds: FileDataset) -> str:
    elem = ds.file_meta.get_item(0x00020010, keep_deferred=True)
    if elem is None:
        raise InvalidInstance(
            CANNOT_UNDERSTAND,
            "not a DICOM PS3.10 file: File Meta Information lacks Transfer Syntax UID (0002,0010)",
        )
    uid = _text(elem)
    if not is_valid_uid(uid):
        raise InvalidInstance(CANNOT_UNDERSTAND, f"invalid Transfer Syntax UID {uid[:80]!r}")
    return uid


def _check_complete(ds: Dataset, end: int, size: int) -> None:
    """Refuse files pydicom read only partly.

    pydicom tolerates truncation: it stops quietly at an early end of file and skips deferred
    values by seeking, even past the end. A complete parse ends exactly at the end of the
    file with every top-level value inside it.
    """
    if end != size:
        raise InvalidInstance(
            CANNOT_UNDERSTAND, f"truncated or malformed file: parsing ended at byte {end} of {size}"
        )
    for elem in ds._dict.values():
        if (
            isinstance(elem, RawDataElement)
            and elem.length != _UNDEFINED_LENGTH
            and elem.value_tell + elem.length > size
        ):
            raise InvalidInstance(
                CANNOT_UNDERSTAND, f"truncated file: element {elem.tag:08X} runs past the end"
            )


def _uid(ds: Dataset, tag: int, name: str) -> str:
    elem = ds.get_item(tag, keep_deferred=True)
    value = "" if elem is None else _text(elem)
    if not value:
        raise InvalidInstance(DATA_SET_DOES_NOT_MATCH_SOP_CLASS, f"missing or empty {name}")
    if not is_valid_uid(value):
        raise InvalidInstance(DATA_SET_DOES_NOT_MATCH_SOP_CLASS, f"invalid {name}: {value[:80]!r}")
    return value


# --- Pixel Data -------------------------------------------------------------------------------


def _first_value(metadata: dict[str, Any], tag: str) -> Any:
    values = metadata.get(tag, {}).get("Value")
    return values[0] if isinstance(values, list) and values else None


def _positive_int(metadata: dict[str, Any], tag: str, name: str, default: int | None) -> int:
    value = _first_value(metadata, tag)
    if value is None and default is not None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise InvalidInstance(
            DATA_SET_DOES_NOT_MATCH_SOP_CLASS, f"missing or invalid {name} for the Pixel Data"
        )
    return value


def _pixel_layout(
    filename: str, ds: Dataset, metadata: dict[str, Any], transfer_syntax_uid: str
) -> PixelLayout | None:
    present = sorted(tag for tag in PIXEL_DATA_TAGS if tag in ds._dict)
    if not present:
        return None
    if len(present) > 1:
        raise InvalidInstance(
            DATA_SET_DOES_NOT_MATCH_SOP_CLASS, "more than one of Pixel Data, Float Pixel Data"
        )
    tag = present[0]
    elem = ds.get_item(tag, keep_deferred=True)
    if isinstance(elem, RawDataElement):
        value_offset, length, little = elem.value_tell, elem.length, elem.is_little_endian
    else:  # converted by pydicom (small implicit VR value, VR resolved by pydicom)
        value_offset = elem.file_tell if elem.file_tell is not None else -1
        length = _UNDEFINED_LENGTH if elem.is_undefined_length else len(elem.value or b"")
        little = ds.original_encoding[1] is not False
    encapsulated = length == _UNDEFINED_LENGTH
    _check_encapsulation(transfer_syntax_uid, encapsulated)
    frames = _positive_int(metadata, "00280008", "Number of Frames (0028,0008)", default=1)
    try:
        with open(filename, "rb", buffering=0) as fp:
            if encapsulated:
                return encapsulated_layout(
                    fp,
                    tag=tag,
                    value_offset=value_offset,
                    number_of_frames=frames,
                    transfer_syntax_uid=transfer_syntax_uid,
                    extended_offsets=_extended_offsets(fp, ds, little),
                    little_endian=little,
                )
    except MalformedPixelDataError as exc:
        raise InvalidInstance(CANNOT_UNDERSTAND, str(exc)) from exc
    except PixelDataError as exc:
        raise InvalidInstance(DATA_SET_DOES_NOT_MATCH_SOP_CLASS, str(exc)) from exc
    except OSError as exc:
        raise InvalidInstance(CANNOT_UNDERSTAND, f"cannot read the Pixel Data: {exc}") from exc
    interpretation = _first_value(metadata, "00280004")
    try:
        return native_layout(
            tag=tag,
            value_offset=value_offset,
            value_length=length,
            rows=_positive_int(metadata, "00280010", "Rows (0028,0010)", None),
            columns=_positive_int(metadata, "00280011", "Columns (0028,0011)", None),
            samples_per_pixel=_positive_int(
                metadata, "00280002", "Samples per Pixel (0028,0002)", None
            ),
            bits_allocated=_positive_int(metadata, "00280100", "Bits Allocated (0028,0100)", None),
            number_of_frames=frames,
            photometric_interpretation=interpretation if isinstance(interpretation, str) else "",
        )
    except PixelDataError as exc:
        raise InvalidInstance(DATA_SET_DOES_NOT_MATCH_SOP_CLASS, str(exc)) from exc


def _check_encapsulation(transfer_syntax_uid: str, encapsulated: bool) -> None:
    """PS3.5 Section A.4: encapsulated exactly when the transfer syntax compresses pixels."""
    if encapsulated and transfer_syntax_uid in _NATIVE_TRANSFER_SYNTAXES:
        raise InvalidInstance(
            CANNOT_UNDERSTAND,
            f"encapsulated Pixel Data in native transfer syntax {transfer_syntax_uid}",
        )
    uid = UID(transfer_syntax_uid)
    if not encapsulated and uid.is_transfer_syntax and uid.is_encapsulated:
        raise InvalidInstance(
            CANNOT_UNDERSTAND,
            f"native Pixel Data in encapsulated transfer syntax {transfer_syntax_uid}",
        )


def _extended_offsets(
    fp: BinaryIO, ds: Dataset, little: bool
) -> tuple[Sequence[int], Sequence[int]] | None:
    """Decode (7FE0,0001) Extended Offset Table and (7FE0,0002) its Lengths, if usable."""
    tables: list[Sequence[int]] = []
    for tag in (0x7FE00001, 0x7FE00002):
        elem = ds.get_item(tag, keep_deferred=True)
        if elem is None:
            return None
        data = _element_bytes(fp, elem)
        if not data or len(data) % 8:
            return None
        tables.append(struct.unpack(f"{'<' if little else '>'}{len(data) // 8}Q", data))
    return tables[0], tables[1]


def _element_bytes(fp: BinaryIO, elem: DataElement | RawDataElement) -> bytes:
    value = elem.value
    if isinstance(value, bytes):
        return value
    if isinstance(elem, RawDataElement) and value is None and elem.length != _UNDEFINED_LENGTH:
        fp.seek(elem.value_tell)
        return fp.read(elem.length)
    return b""
