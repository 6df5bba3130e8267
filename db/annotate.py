"""What people write on runs after the fact: a name, free-text notes and tags.

Every value is checked before anything is written (one clear error, nothing half-done):
names and tags refuse control and bidi characters (`gradscope.vocab.text.has_unsafe_chars`) and are
capped (MAX_NAME_CHARS, MAX_TAG_CHARS); notes may hold newlines and tabs but no other control
character and are capped at MAX_NOTES_CHARS. Each write is one short transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import Engine, delete, insert, select, update

from gradscope.db.errors import NotFoundError, StorageError
from gradscope.db.models import RunModel, RunTagModel
from gradscope.db.transactions import orm, transaction
from gradscope.vocab.fields import MAX_NAME_CHARS, MAX_TAG_CHARS
from gradscope.vocab.text import has_unsafe_chars, printable

MAX_NOTES_CHARS = 10_000
MAX_TAGS_PER_RUN = 50

_runs = RunModel.__table__
_tags = RunTagModel.__table__


class AnnotationError(StorageError):
    """A name, note or tag that cannot be stored as given (the message says why)."""


def check_name(name: str | None) -> str | None:
    """A run name, trimmed; None or "" clears it."""
    if name is None or not name.strip():
        return None
    name = name.strip()
    if has_unsafe_chars(name):
        raise AnnotationError(f'name "{printable(name)}" holds control characters')
    if len(name) > MAX_NAME_CHARS:
        raise AnnotationError(f"name is {len(name)} characters; the limit is {MAX_NAME_CHARS}")
    return name


def check_tag(tag: str) -> str:
    """One tag, trimmed: non-empty, no control characters, no commas (lists are comma-typed)."""
    tag = tag.strip()
    if not tag:
        raise AnnotationError("a tag cannot be empty")
    if has_unsafe_chars(tag):
        raise AnnotationError(f'tag "{printable(tag)}" holds control characters')
    if "," in tag:
        raise AnnotationError(f"tag {tag!r} holds a comma; give tags one by one")
    if len(tag) > MAX_TAG_CHARS:
        raise AnnotationError(
            f"tag {tag[:20]!r}... is {len(tag)} characters; the limit is {MAX_TAG_CHARS}"
        )
    return tag


def check_notes(notes: str | None) -> str | None:
    """Notes as typed (newlines and tabs allowed); None or blank clears them."""
    if notes is None or not notes.strip():
        return None
    if has_unsafe_chars(notes.replace("\n", "").replace("\t", "").replace("\r", "")):
        raise AnnotationError("notes hold control characters (only newlines and tabs are allowed)")
    if len(notes) > MAX_NOTES_CHARS:
        raise AnnotationError(f"notes are {len(notes)} characters; the limit is {MAX_NOTES_CHARS}")
    return notes


def _update_run(engine: Engine, run_id: str, **values: object) -> None:
    with transaction(engine) as s:
        if s.execute(update(_runs).where(_runs.c.id == run_id).values(**values)).rowcount != 1:
            raise NotFoundError(f"no run with id {run_id!r}")


def rename_run(engine: Engine, run_id: str, name: str | None) -> str | None:
    """Give a run a new name (None or blank: no name); returns the stored name."""
    stored = check_name(name)
    _update_run(engine, run_id, name=stored)
    return stored


def set_notes(engine: Engine, run_id: str, notes: str | None) -> str | None:
    """Replace a run's notes (None or blank clears them); returns what was stored."""
    stored = check_notes(notes)
    _update_run(engine, run_id, notes=stored)
    return stored


def tags_of(engine: Engine, run_ids: Sequence[str]) -> dict[str, list[str]]:
    """Each given run's tags, sorted (runs without tags are absent)."""
    out: dict[str, list[str]] = {}
    with transaction(engine) as conn, orm(conn) as s:
        rows = s.execute(
            select(_tags.c.run_id, _tags.c.tag)
            .where(_tags.c.run_id.in_(list(run_ids)))
            .order_by(_tags.c.run_id, _tags.c.tag)
        )
        for run_id, tag in rows:
            out.setdefault(run_id, []).append(tag)
    return out


def set_tags(
    engine: Engine, run_id: str, add: Iterable[str] = (), remove: Iterable[str] = ()
) -> list[str]:
    """Add and remove tags on one run in one transaction; returns its tags afterwards."""
    adding = list(dict.fromkeys(check_tag(t) for t in add))
    removing = [t.strip() for t in remove]
    with transaction(engine) as s:
        if s.execute(select(_runs.c.id).where(_runs.c.id == run_id)).first() is None:
            raise NotFoundError(f"no run with id {run_id!r}")
        if removing:
            s.execute(delete(_tags).where(_tags.c.run_id == run_id, _tags.c.tag.in_(removing)))
        have = set(s.scalars(select(_tags.c.tag).where(_tags.c.run_id == run_id)))
        new = [t for t in adding if t not in have]
        if len(have) + len(new) > MAX_TAGS_PER_RUN:
            raise AnnotationError(f"a run carries at most {MAX_TAGS_PER_RUN} tags")
        if new:
            s.execute(insert(_tags), [{"run_id": run_id, "tag": t} for t in new])
        return sorted(have | set(new))


def replace_tags(engine: Engine, run_id: str, tags: Iterable[str]) -> list[str]:
    """Make a run's tags exactly `tags` (the dashboard's tag editor)."""
    wanted = list(dict.fromkeys(check_tag(t) for t in tags))
    current = tags_of(engine, [run_id]).get(run_id, [])
    return set_tags(engine, run_id, add=wanted, remove=[t for t in current if t not in wanted])
