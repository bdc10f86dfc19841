from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel


class DataOut(BaseModel):
    object: dict[str, Any]


class EventOut(BaseModel):
    object: Literal["event"] = "event"
    id: str
    type: str
    api_version: str
    created: datetime
    data: DataOut
