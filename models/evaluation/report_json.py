"""Reports as strict JSON, which every tool that reads them can parse.

A rate with nothing to count is NaN in the library (false alarms on a dataset with no defect-free
images, such as NEU-Seg); Python's `json` would write it as a bare `NaN`, which strict parsers (jq,
JavaScript, most JSON libraries) refuse. Here it becomes `null`, and numpy scalars become numbers.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def report_json(report: dict, indent: int | None = 2) -> str:
    """`report` as strict JSON: non-finite numbers become null."""
    return json.dumps(_plain(report), indent=indent, allow_nan=False, default=float)
