"""What an import did (or, with dry_run, would do), run by run: for people and as JSON."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True)
class ImportedRun:
    id: str
    name: str | None
    reason: str = ""  # why it was not added (empty for added runs)


@dataclass(frozen=True)
class ImportReport:
    """What an import did (or, with dry_run, would do), run by run."""

    source: str
    dry_run: bool
    schema: str
    upgraded_from: str | None
    added: tuple[ImportedRun, ...] = ()
    already_present: tuple[ImportedRun, ...] = ()
    conflicting: tuple[ImportedRun, ...] = ()
    refused: tuple[ImportedRun, ...] = ()
    # The longest write transaction (on SQLite: the longest hold of the write lock), seconds.
    longest_write_s: float = 0.0
    # Already-present runs that gained tags, a name or notes from the file.
    annotated: tuple[ImportedRun, ...] = ()

    @property
    def summary(self) -> str:
        """One paragraph for people, then a line per run not added."""
        verb = "would add" if self.dry_run else "added"
        lines = [
            f"{self.source}: {verb} {len(self.added)} run(s); "
            f"{len(self.already_present)} already present; "
            f"{len(self.conflicting)} conflicting (skipped); {len(self.refused)} refused."
        ]
        if self.annotated:
            lines.append(f"{len(self.annotated)} present run(s) took tags, names or notes")
        if self.upgraded_from:
            lines.append(f"(the file's schema {self.upgraded_from} was upgraded in a copy)")
        for title, runs in (("conflicting", self.conflicting), ("refused", self.refused)):
            for r in runs:
                lines.append(f"  {title}: {r.id[:8]} {r.name or ''}: {r.reason}".rstrip())
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        """Every field but the timing; each run as {id, name, reason (null for added runs)}."""
        doc = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "longest_write_s"}
        for key, runs in doc.items():
            if isinstance(runs, tuple):
                doc[key] = [{"id": r.id, "name": r.name, "reason": r.reason or None} for r in runs]
        return doc
