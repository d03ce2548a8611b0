"""The Store Instances Response dataset (PS3.18 10.5.3, Table 10.5.3-1)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dicomweb_server.services.store import StoreOutcome


def _uid(value: str | None) -> dict[str, Any]:
    return {"vr": "UI", "Value": [value]} if value else {"vr": "UI"}


def stow_status(outcomes: Sequence[StoreOutcome]) -> int:
    """200 when all stored cleanly, 202 when some failed or carry warnings, 409 when none."""
    stored = [outcome for outcome in outcomes if outcome.stored]
    if not stored:
        return 409
    if len(stored) < len(outcomes) or any(outcome.warning_reason for outcome in stored):
        return 202
    return 200


def stow_response(
    outcomes: Sequence[StoreOutcome], base_url: str, study_uid: str | None
) -> dict[str, Any]:
    """Build the response dataset as DICOM JSON."""
    referenced: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    studies = {outcome.study_instance_uid for outcome in outcomes if outcome.stored}
    for outcome in outcomes:
        item: dict[str, Any] = {
            "00081150": _uid(outcome.sop_class_uid),
            "00081155": _uid(outcome.sop_instance_uid),
        }
        if outcome.stored:
            if outcome.warning_reason is not None:
                item["00081196"] = {"vr": "US", "Value": [outcome.warning_reason]}
            item["00081190"] = {
                "vr": "UR",
                "Value": [
                    f"{base_url}/studies/{outcome.study_instance_uid}/series/"
                    f"{outcome.series_instance_uid}/instances/{outcome.sop_instance_uid}"
                ],
            }
            referenced.append(dict(sorted(item.items())))
        else:
            item["00081197"] = {"vr": "US", "Value": [outcome.failure_reason]}
            failed.append(dict(sorted(item.items())))
    dataset: dict[str, Any] = {}
    study = study_uid or (next(iter(studies)) if len(studies) == 1 else None)
    if study:
        dataset["00081190"] = {"vr": "UR", "Value": [f"{base_url}/studies/{study}"]}
    if failed:
        dataset["00081198"] = {"vr": "SQ", "Value": failed}
    if referenced:
        dataset["00081199"] = {"vr": "SQ", "Value": referenced}
    return dataset
