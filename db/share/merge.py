"""Names, notes and tags of runs that both databases have with the same content.

The conflict rule (README, "Sharing"): tags are united; this database's name and notes are
kept, the file's fill them only where this database has none. A digest leaves them out
(`gradscope.db.share.digest`), so writing on a run never makes two copies conflict.
"""

from __future__ import annotations

from sqlalchemy import Engine, insert, select

from gradscope.db.share.base import TABLES, SourceFile, chunks
from gradscope.db.share.report import ImportedRun
from gradscope.db.transactions import IMPORT_LOCK, transaction, with_retry
from gradscope.vocab.stored_values import MAX_TAGS_PER_RUN


def merge_annotations(
    engine: Engine, checked: SourceFile, present: list[ImportedRun], *, write: bool
) -> list[ImportedRun]:
    """Merge the file's names, notes and tags into the `present` runs (only count them unless
    `write`). Returns the runs that gain something. One short transaction per chunk of runs,
    lock-first when it writes."""
    ids = sorted({p.id for p in present})
    from_file = {r.id: r for r in checked.runs if r.id in set(ids)}
    runs_t, tags_t = TABLES["runs"], TABLES["run_tags"]
    gained: list[ImportedRun] = []
    for chunk in chunks(ids):
        marks = ", ".join("?" * len(chunk))
        # The checked private copy; its tags passed validation like every other row.
        file_tags: dict[str, list[str]] = {i: [] for i in chunk}
        for run_id, tag in checked.conn.execute(
            f"SELECT run_id, tag FROM run_tags WHERE run_id IN ({marks}) ORDER BY run_id, tag",
            chunk,
        ):
            file_tags[run_id].append(tag)

        def merge(chunk: list[str] = chunk, file_tags: dict = file_tags) -> list[ImportedRun]:
            found: list[ImportedRun] = []
            what, lock = "merging names, notes and tags failed", IMPORT_LOCK if write else None
            with transaction(engine, what, lock=lock) as conn:
                stmt = select(runs_t.c.id, runs_t.c.name, runs_t.c.notes).where(
                    runs_t.c.id.in_(chunk)
                )
                here = {row["id"]: dict(row) for row in conn.execute(stmt).mappings()}
                here_tags: dict[str, set[str]] = {i: set() for i in chunk}
                for run_id, tag in conn.execute(
                    select(tags_t.c.run_id, tags_t.c.tag).where(tags_t.c.run_id.in_(chunk))
                ):
                    here_tags[run_id].add(tag)
                for run_id in chunk:
                    source, mine = from_file[run_id], here.get(run_id)
                    if mine is None:  # deleted meanwhile: nothing to merge into
                        continue
                    fill = {
                        k: source.run.get(k)
                        for k in ("name", "notes")
                        if not mine[k] and source.run.get(k)
                    }
                    new_tags = [t for t in file_tags[run_id] if t not in here_tags[run_id]]
                    # United, but at most MAX_TAGS_PER_RUN (the file's first ones, in order):
                    # what pages and the tag editor can hold.
                    new_tags = new_tags[: max(0, MAX_TAGS_PER_RUN - len(here_tags[run_id]))]
                    if not fill and not new_tags:
                        continue
                    found.append(ImportedRun(run_id, mine["name"] or source.run["name"]))
                    if write and fill:
                        conn.execute(runs_t.update().where(runs_t.c.id == run_id).values(**fill))
                    if write and new_tags:
                        conn.execute(
                            insert(tags_t), [{"run_id": run_id, "tag": t} for t in new_tags]
                        )
            return found

        gained += with_retry(merge)
    return gained
