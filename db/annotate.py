"""What people write on runs after the fact: a name, free-text notes and tags.

Every value is checked before anything is written (one clear error, nothing half-done) by the
rules import checks files with too (gradscope.vocab.stored_values): names and tags NFC and
trimmed, without control, bidi or invisible characters, capped; notes may hold line breaks and
tabs but no other control character; at most MAX_TAGS_PER_RUN tags. Each write is one short
transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

from sqlalchemy import Engine, delete, insert, select, update

from gradscope.db.errors import NotFoundError, StorageError
from gradscope.db.models import RunModel, RunTagModel
from gradscope.db.transactions import orm, transaction
from gradscope.vocab import stored_values as rules
from gradscope.vocab.stored_values import MAX_NOTES_CHARS, MAX_TAGS_PER_RUN, StoredValueError

__all__ = ["MAX_NOTES_CHARS", "MAX_TAGS_PER_RUN", "AnnotationError"]

_runs = RunModel.__table__
_tags = RunTagModel.__table__
_T = TypeVar("_T")


class AnnotationError(StorageError):
    """A name, note or tag that cannot be stored as given (the message says why)."""


def _checked(rule: Callable[..., _T], value: object) -> _T:
    try:
        return rule(value)
    except StoredValueError as exc:
        raise AnnotationError(str(exc)) from None


def check_name(name: str | None) -> str | None:
    """A run name as stored (gradscope.vocab.stored_values.clean_name); None or "" clears it."""
    return _checked(rules.clean_name, name)


def check_tag(tag: str) -> str:
    """One tag as stored (gradscope.vocab.stored_values.clean_tag)."""
    return _checked(rules.clean_tag, tag)


def check_notes(notes: str | None) -> str | None:
    """Notes as typed (line breaks and tabs allowed); None or blank clears them."""
    return _checked(rules.clean_notes, notes)


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
    # Matched by their stored form, so a tag stored padded or in another Unicode form (by an
    # older version) can still be removed by what it looks like.
    removing = {rules.tag_key(t) for t in remove}
    with transaction(engine) as s:
        if s.execute(select(_runs.c.id).where(_runs.c.id == run_id)).first() is None:
            raise NotFoundError(f"no run with id {run_id!r}")
        have = set(s.scalars(select(_tags.c.tag).where(_tags.c.run_id == run_id)))
        gone = [t for t in have if rules.tag_key(t) in removing]
        if gone:
            s.execute(delete(_tags).where(_tags.c.run_id == run_id, _tags.c.tag.in_(gone)))
            have -= set(gone)
        new = [t for t in adding if t not in have]
        if len(have) + len(new) > MAX_TAGS_PER_RUN:
            raise AnnotationError(f"a run carries at most {MAX_TAGS_PER_RUN} tags")
        if new:
            s.execute(insert(_tags), [{"run_id": run_id, "tag": t} for t in new])
        return sorted(have | set(new))


def replace_tags(engine: Engine, run_id: str, tags: Iterable[str]) -> list[str]:
    """Make a run's tags exactly `tags` (the dashboard's tag editor)."""
    wanted = _checked(rules.clean_tags, tags)
    current = tags_of(engine, [run_id]).get(run_id, [])
    return set_tags(engine, run_id, add=wanted, remove=[t for t in current if t not in wanted])


def edit_run(
    engine: Engine, run_id: str, *, name: str | None, notes: str | None, tags: Iterable[str]
) -> None:
    """Set a run's name and notes and make its tags exactly `tags`, all in one transaction
    (the dashboard's editor): every value is checked first, and a run deleted meanwhile is
    NotFoundError with nothing written."""
    stored_name, stored_notes = check_name(name), check_notes(notes)
    wanted = _checked(rules.clean_tags, tags)
    with transaction(engine) as s:
        changed = s.execute(
            update(_runs).where(_runs.c.id == run_id).values(name=stored_name, notes=stored_notes)
        ).rowcount
        if changed != 1:
            raise NotFoundError(f"no run with id {run_id!r}")
        have = set(s.scalars(select(_tags.c.tag).where(_tags.c.run_id == run_id)))
        gone = [t for t in have if t not in wanted]
        if gone:
            s.execute(delete(_tags).where(_tags.c.run_id == run_id, _tags.c.tag.in_(gone)))
        new = [t for t in wanted if t not in have]
        if new:
            s.execute(insert(_tags), [{"run_id": run_id, "tag": t} for t in new])
