"""The resumable state of a search: every evaluated candidate, checkpointed after each evaluation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from quala.errors import QualaError
from quala.front import FrontPoint
from quala.io import read_json, write_json_atomic
from quala.lengths import Gene

STATE_FILE = "search_state.json"


class SearchState:
    """The evaluation cache, checkpointed atomically to ``search_state.json`` after every evaluation."""

    VERSION = 1

    def __init__(self, path: Path | None, fingerprint: dict[str, Any]):
        self.path = path
        self.fingerprint = fingerprint
        self.cache: dict[Gene, FrontPoint] = {}
        self.wall_seconds = 0.0
        if path is not None and path.is_file():
            raw = read_json(path)
            if not isinstance(raw, dict) or raw.get("version") != self.VERSION:
                raise QualaError(f"{path} is not a QuaLA search state (version {self.VERSION})")
            if raw.get("fingerprint") != fingerprint:
                raise QualaError(
                    f"{path} holds a search of a different model, data or measurement setting; use another "
                    "--output directory (or delete that file to start over)"
                )
            for record in raw.get("candidates", []):
                cand = FrontPoint.from_dict(record)
                self.cache[cand.gene] = cand
            self.wall_seconds = float(raw.get("wall_seconds", 0.0))

    def save(self, wall_seconds: float) -> None:
        if self.path is None:
            return
        write_json_atomic(
            self.path,
            {
                "version": self.VERSION,
                "fingerprint": self.fingerprint,
                "wall_seconds": round(wall_seconds, 3),
                "candidates": [c.to_dict() for c in self.cache.values()],
            },
        )
