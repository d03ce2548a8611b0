"""The deterministic DICOM workload every server receives, generated with pydicom.

Everything is seeded: UIDs are counters under pydicom's UID root, pixel data and demographics
come from fixed seeds, so two runs store the same bytes and a difference in figures is a
difference in the servers. Four kinds of objects:

* `ct_instance`: a 512x512 16-bit CT slice (~0.5 MB), for STOW, series metadata, instance
  retrieval and rendering;
* `SmallInstance`: a tiny Secondary Capture instance (8x8 pixels) with realistic patient and
  study attributes, for the QIDO index and the 1M-instance PostgreSQL run. pydicom writes it
  once with placeholders of fixed width; each instance is then the template with its values
  spliced in (a few microseconds instead of a dcmwrite), which is what makes a million
  instances affordable on the client side;
* `multiframe_files`: one 600-frame 512x512 object, native and encapsulated (RLE Lossless,
  JPEG 2000 Lossless) with the same pixels, cached on disk since encoding takes a while.
"""

from __future__ import annotations

import io
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pydicom
import pydicom.config
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    PYDICOM_ROOT_UID,
    UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
)

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
MULTIFRAME_WORD_SC = "1.2.840.10008.5.1.4.1.1.7.3"

#: Width of every generated UID: fixed, so template instances can splice them in place.
UID_WIDTH = len(PYDICOM_ROOT_UID) + len("10.") + 13


def uid(kind: int, number: int) -> str:
    """The `number`-th UID of `kind` (10..99): deterministic, always `UID_WIDTH` long."""
    if not 10 <= kind <= 99 or not 0 <= number < 9 * 10**12:
        raise ValueError("uid kind must be 10..99 and number below 9e12")
    return f"{PYDICOM_ROOT_UID}{kind}.{10**12 + number}"


def part10(ds: Dataset, transfer_syntax: str) -> bytes:
    """`ds` as a PS3.10 file with its File Meta Information."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = UID(transfer_syntax)
    ds.file_meta = meta
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


# ----------------------------------------------------------------------------------------
# CT slices


class CTSeries:
    """512x512 CT slices of one study and series; pixels cycle through 8 seeded phantoms."""

    def __init__(self, kind: int, patient: int = 1) -> None:
        self.kind = kind
        self.patient = patient
        self.study = uid(kind, 0)
        self.series = uid(kind, 1)
        self.pixels = _phantoms(8)

    def sop_uid(self, index: int) -> str:
        return uid(self.kind, 1000 + index)

    def url(self, index: int) -> str:
        """The instance's WADO-RS path below the DICOMweb root."""
        return f"/studies/{self.study}/series/{self.series}/instances/{self.sop_uid(index)}"

    def instance(self, index: int) -> bytes:
        ds = Dataset()
        ds.SOPClassUID = CT_IMAGE_STORAGE
        ds.SOPInstanceUID = self.sop_uid(index)
        ds.StudyInstanceUID = self.study
        ds.SeriesInstanceUID = self.series
        ds.PatientName = f"BENCH^CT{self.patient}"
        ds.PatientID = f"CT{self.patient:06d}"
        ds.PatientBirthDate = "19700101"
        ds.PatientSex = "O"
        ds.StudyDate = ds.SeriesDate = "20240101"
        ds.StudyTime = "120000"
        ds.AccessionNumber = f"CT{self.kind:02d}{self.patient:06d}"
        ds.StudyID = "1"
        ds.ReferringPhysicianName = ""
        ds.Modality = "CT"
        ds.SeriesNumber = 1
        ds.InstanceNumber = index + 1
        ds.FrameOfReferenceUID = uid(self.kind, 2)
        ds.ImagePositionPatient = [0.0, 0.0, float(index)]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.SliceLocation = float(index)
        ds.PixelSpacing = [0.5, 0.5]
        ds.SliceThickness = 1.0
        ds.KVP = 120
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
        ds.WindowCenter = 40
        ds.WindowWidth = 400
        ds.Rows = ds.Columns = 512
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 12
        ds.HighBit = 11
        ds.PixelRepresentation = 0
        ds.PixelData = self.pixels[index % len(self.pixels)]
        return part10(ds, ExplicitVRLittleEndian)

    def instances(self, count: int) -> list[bytes]:
        return [self.instance(index) for index in range(count)]


def _phantoms(count: int) -> list[bytes]:
    """Body-like discs (soft tissue, bone ring, air outside) with noise, as 12-bit values."""
    rng = np.random.default_rng(7)
    y, x = np.mgrid[0:512, 0:512]
    result = []
    for k in range(count):
        r = np.hypot(x - 256 - 4 * k, (y - 256) * 1.2)
        image = np.where(r < 200, 1064, 24).astype(np.float64)
        image[(r > 180) & (r < 200)] = 1900
        image[np.hypot(x - 200, y - 230 + 3 * k) < 30] = 1150
        image += rng.normal(0, 12, size=image.shape)
        result.append(np.clip(image, 0, 4095).astype(np.uint16).tobytes())
    return result


# ----------------------------------------------------------------------------------------
# Small instances with realistic demographics


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


LAST = _words(
    "SMITH JOHNSON WILLIAMS BROWN JONES GARCIA MILLER DAVIS RODRIGUEZ MARTINEZ HERNANDEZ "
    "LOPEZ GONZALEZ WILSON ANDERSON THOMAS TAYLOR MOORE JACKSON MARTIN LEE PEREZ THOMPSON "
    "WHITE HARRIS SANCHEZ CLARK RAMIREZ LEWIS ROBINSON WALKER YOUNG ALLEN KING WRIGHT SCOTT "
    "TORRES NGUYEN HILL FLORES GREEN ADAMS NELSON BAKER HALL RIVERA CAMPBELL MITCHELL CARTER "
    "ROBERTS MUELLER SCHMIDT SCHNEIDER FISCHER WEBER MEYER WAGNER BECKER DUBOIS MOREAU "
    "LAURENT BERNARD PETIT ROSSI RUSSO FERRARI ESPOSITO BIANCHI ROMANO COLOMBO JANSSENS "
    "PEETERS MAES JACOBS MERTENS WILLEMS CLAES GOOSSENS WOUTERS DEVRIES VANDIJK BAKKER"
)
FIRST = _words(
    "JAMES MARY ROBERT PATRICIA JOHN JENNIFER MICHAEL LINDA DAVID ELIZABETH WILLIAM BARBARA "
    "RICHARD SUSAN JOSEPH JESSICA THOMAS SARAH CHARLES KAREN CHRISTOPHER LISA DANIEL NANCY "
    "MATTHEW BETTY ANTHONY MARGARET MARK SANDRA PAUL ASHLEY STEVEN KIMBERLY ANDREW EMILY "
    "KENNETH DONNA JOSHUA MICHELLE KEVIN CAROL BRIAN AMANDA GEORGE MELISSA EDWARD DEBORAH "
    "LUCAS EMMA NOAH OLIVIA LOUIS CHLOE HUGO LEA SOPHIE MAXIME CAMILLE JULIEN MARIE PIETER"
)
#: Modalities with rough frequencies of a general hospital's study mix.
MODALITIES = (("CR", 24), ("CT", 20), ("MR", 14), ("US", 14), ("DX", 12), ("MG", 6), ("PT", 3),
              ("NM", 3), ("XA", 4))  # fmt: skip
DESCRIPTIONS = {
    "CR": "CHEST PA AND LATERAL", "CT": "CT ABDOMEN PELVIS W CONTRAST", "MR": "MRI BRAIN WO",
    "US": "US ABDOMEN COMPLETE", "DX": "XR KNEE 3 VIEWS", "MG": "SCREENING MAMMOGRAM",
    "PT": "PET CT WHOLE BODY", "NM": "NM BONE SCAN", "XA": "CORONARY ANGIOGRAPHY",
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Study:
    """One generated study's identifying and searchable attributes."""

    index: int
    study_uid: str
    patient_id: str
    patient_name: str
    birth_date: str
    sex: str
    study_date: str
    study_time: str
    accession: str
    modality: str
    description: str


def make_studies(count: int, *, kind: int, seed: int = 3) -> list[Study]:
    """`count` studies of about `count`/2.5 patients, dated 2008-2024, seeded."""
    rng = random.Random(seed)
    modalities = [m for m, weight in MODALITIES for _ in range(weight)]
    patients = max(1, int(count / 2.5))
    people = []
    for number in range(patients):
        name = f"{rng.choice(LAST)}^{rng.choice(FIRST)}"
        birth = f"{rng.randint(1930, 2015)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"
        people.append((f"P{number + 1:07d}", name, birth, rng.choice("MF")))
    studies = []
    for index in range(count):
        pid, name, birth, sex = people[rng.randrange(patients)]
        modality = rng.choice(modalities)
        day = rng.randrange(17 * 365)
        year, rest = 2008 + day // 365, day % 365
        month, dom = 1 + rest // 31 % 12, 1 + rest % 28
        studies.append(
            Study(
                index, uid(kind, index), pid, name, birth, sex, f"{year}{month:02d}{dom:02d}",
                f"{rng.randrange(7, 19):02d}{rng.randrange(60):02d}00",
                f"A{index + 100000000:09d}", modality, DESCRIPTIONS[modality],
            )
        )  # fmt: skip
    return studies


class SmallInstance:
    """Tiny instances whose attributes are spliced into one pydicom-written template.

    Every variable attribute has a fixed width (values are space-padded, which DICOM treats
    as insignificant), so each instance is the template's bytes with values in place.
    """

    WIDTHS: ClassVar[dict[str, int]] = {
        "SOPInstanceUID": UID_WIDTH, "StudyInstanceUID": UID_WIDTH,
        "SeriesInstanceUID": UID_WIDTH, "PatientName": 40, "PatientID": 8,
        "PatientBirthDate": 8, "PatientSex": 2, "StudyDate": 8, "SeriesDate": 8,
        "StudyTime": 6, "AccessionNumber": 10, "Modality": 2, "StudyDescription": 32,
        "SeriesNumber": 4, "InstanceNumber": 6, "StudyID": 8,
    }  # fmt: skip
    #: How often each marker occurs: pydicom copies the SOP Instance UID into the meta.
    OCCURRENCES: ClassVar[dict[str, int]] = {"SOPInstanceUID": 2}

    def __init__(self) -> None:
        ds = Dataset()
        ds.SOPClassUID = SECONDARY_CAPTURE
        ds.ConversionType = "WSD"
        ds.ReferringPhysicianName = "REFERRER^DOCTOR"
        ds.InstitutionName = "BENCH GENERAL HOSPITAL"
        ds.Rows = ds.Columns = 8
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit = 7
        ds.PixelRepresentation = 0
        ds.PixelData = bytes(range(64))
        markers: dict[str, bytes] = {}
        with pydicom.config.disable_value_validation():
            for number, (keyword, width) in enumerate(self.WIDTHS.items()):
                # Integer String values need numeric markers; the others any unique text.
                numeric = keyword in ("SeriesNumber", "InstanceNumber")
                if numeric:
                    text = f"99{number:02d}".ljust(width, "0")
                else:
                    text = f"@{chr(ord('A') + number)}".ljust(width, "#")
                markers[keyword] = text.encode()
                setattr(ds, keyword, text)
            data = part10(ds, ExplicitVRLittleEndian)
        slots = []
        for keyword, marker in markers.items():
            found = [i for i in range(len(data)) if data.startswith(marker, i)]
            if len(found) != self.OCCURRENCES.get(keyword, 1):
                raise RuntimeError(f"template marker of {keyword} found {len(found)} times")
            slots += [(offset, keyword) for offset in found]
        slots.sort()
        self._pieces: list[bytes] = []
        self._keys: list[str] = []
        position = 0
        for offset, keyword in slots:
            self._pieces.append(data[position:offset])
            self._keys.append(keyword)
            position = offset + self.WIDTHS[keyword]
        self._pieces.append(data[position:])

    def render(self, values: dict[str, str]) -> bytes:
        """The instance with `values`, keyword -> text of at most the keyword's width."""
        out = [self._pieces[0]]
        for keyword, piece in zip(self._keys, self._pieces[1:], strict=True):
            value = values[keyword]
            width = self.WIDTHS[keyword]
            if len(value) > width:
                raise ValueError(f"{keyword} {value!r} is longer than {width}")
            out.append(value.ljust(width).encode("ascii"))
            out.append(piece)
        return b"".join(out)

    def study_instances(
        self, study: Study, *, kind: int, per_study: int, per_series: int
    ) -> Iterator[bytes]:
        """The `per_study` instances of `study`, `per_series` to a series."""
        for number in range(per_study):
            yield self.instance(study, kind=kind, number=number, per_series=per_series)

    def instance(self, study: Study, *, kind: int, number: int, per_series: int) -> bytes:
        """Instance `number` of `study`; series UIDs use `kind` + 1, SOP UIDs `kind` + 2."""
        series = number // per_series
        return self.render(
            {
                "StudyInstanceUID": study.study_uid, "PatientName": study.patient_name,
                "PatientID": study.patient_id, "PatientBirthDate": study.birth_date,
                "PatientSex": study.sex, "StudyDate": study.study_date,
                "SeriesDate": study.study_date, "StudyTime": study.study_time,
                "AccessionNumber": study.accession, "Modality": study.modality,
                "StudyDescription": study.description, "StudyID": str(study.index % 10**8),
                "SeriesInstanceUID": uid(kind + 1, study.index * 100 + series),
                "SOPInstanceUID": uid(kind + 2, study.index * 1000 + number),
                "SeriesNumber": str(series + 1),
                "InstanceNumber": str(number + 1),
            }
        )  # fmt: skip


# ----------------------------------------------------------------------------------------
# Multi-frame objects


def frame_arrays(frames: int, rows: int, columns: int) -> Iterator[np.ndarray]:
    """Smooth gradients plus noise, so lossless codecs compress them like real images."""
    rng = np.random.default_rng(11)
    base = (np.add.outer(np.arange(rows), np.arange(columns)) * 4).astype(np.uint16)
    for k in range(frames):
        noise = rng.integers(0, 8, size=(rows, columns), dtype=np.uint16)
        yield (base + noise + k).astype(np.uint16)


def _multiframe_dataset(sop_number: int, frames: int, rows: int, columns: int) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = MULTIFRAME_WORD_SC
    ds.SOPInstanceUID = uid(20, sop_number)
    ds.StudyInstanceUID = uid(20, 0)
    ds.SeriesInstanceUID = uid(20, 1)
    ds.PatientName = "BENCH^FRAMES"
    ds.PatientID = "FRAMES01"
    ds.StudyDate = "20240101"
    ds.Modality = "OT"
    ds.SeriesNumber = 1
    ds.InstanceNumber = sop_number
    ds.NumberOfFrames = frames
    ds.Rows = rows
    ds.Columns = columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    return ds


ENCAPSULATED = {"rle": RLELossless, "j2k": JPEG2000Lossless}


def multiframe_files(
    cache: Path, frames: int, kinds: list[str], rows: int = 512, columns: int = 512
) -> dict[str, Path]:
    """The multi-frame object as `native` and each encapsulated kind, as files in `cache`.

    Files are written once per geometry and reused: the content depends only on the
    arguments (encoding 600 JPEG 2000 frames takes about half a minute).
    """
    from pydicom.pixels.encoders.base import JPEG2000LosslessEncoder, RLELosslessEncoder

    encoders = {"rle": RLELosslessEncoder, "j2k": JPEG2000LosslessEncoder}
    folder = cache / f"multiframe-v1-{frames}x{rows}x{columns}"
    folder.mkdir(parents=True, exist_ok=True)
    wanted = ["native", *kinds]
    paths = {kind: folder / f"{kind}.dcm" for kind in wanted}
    for number, kind in enumerate(wanted, start=2):
        path = paths[kind]
        if path.exists():
            continue
        ds = _multiframe_dataset(number, frames, rows, columns)
        arrays = frame_arrays(frames, rows, columns)
        if kind == "native":
            ds.PixelData = b"".join(a.tobytes() for a in arrays)
            data = part10(ds, ExplicitVRLittleEndian)
        else:
            encoder = encoders[kind]
            if not encoder.is_available:
                raise RuntimeError(f"no {kind} encoder available (install the codecs extra)")
            fragments = [
                encoder.encode(
                    a.tobytes(),
                    rows=rows,
                    columns=columns,
                    samples_per_pixel=1,
                    bits_allocated=16,
                    bits_stored=16,
                    pixel_representation=0,
                    photometric_interpretation="MONOCHROME2",
                    number_of_frames=1,
                )
                for a in arrays
            ]
            ds.PixelData = encapsulate(fragments, has_bot=True)
            ds["PixelData"].VR = "OB"
            data = part10(ds, ENCAPSULATED[kind])
        temporary = path.with_suffix(".part")
        temporary.write_bytes(data)
        temporary.replace(path)
    return paths
