"""The name, notes and tags editor for one run, shared by the Runs and Compare pages. On a
read-only dashboard it shows them as plain text instead: no control that writes."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from gradscope.dashboard import db_gateway
from gradscope.dashboard.tables import escape_markdown
from gradscope.db.annotate import MAX_NOTES_CHARS, MAX_TAGS_PER_RUN
from gradscope.db.errors import StorageError
from gradscope.vocab.fields import MAX_NAME_CHARS


def annotate_form(
    run_id: str, runs: pd.DataFrame, *, key: str, known_tags: list[str] | None = None
) -> None:
    """A form that renames `run_id` and replaces its notes and tags. `runs` is rows of
    db_gateway.runs() indexed by id; the tag choices are `known_tags`, by default the tags
    `runs` carries (every run's when it is every run)."""
    if run_id not in runs.index:
        return
    run = runs.loc[run_id]
    if not db_gateway.writes_allowed():
        shown(run)
        return
    known = known_tags if known_tags is not None else [t for have in runs["tags"] for t in have]
    choices = sorted({*known, *run["tags"]})  # its own tags, even if tagged since `known` was read
    with st.form(f"{key}_{run_id}", border=False):
        name = st.text_input("Name", value=run["name"] or "", max_chars=MAX_NAME_CHARS)
        tags = st.multiselect(
            "Tags",
            choices,
            default=list(run["tags"]),
            accept_new_options=True,  # type a new tag and press Enter
            max_selections=MAX_TAGS_PER_RUN,
        )
        notes = st.text_area("Notes", value=run["notes"] or "", max_chars=MAX_NOTES_CHARS)
        if st.form_submit_button("Save", icon=":material/save:"):
            try:
                db_gateway.annotate_run(run_id, name=name, notes=notes, tags=tags)
            except StorageError as exc:  # a bad value, or a refusal: one line, nothing written
                st.error(escape_markdown(str(exc)), icon=":material/block:")
            else:
                st.toast("Saved")
                st.rerun()


def shown(run: pd.Series) -> None:
    """A run's name, tags and notes as plain text (st.text: typed text is never Markdown)."""
    st.text(f"Name: {_plain(run['name'])}")
    st.text(f"Tags: {', '.join(run['tags']) or '-'}")
    st.text(f"Notes: {_plain(run['notes'])}")
    st.caption("Read-only dashboard: names, notes and tags are edited where it is writable.")


def _plain(value: object) -> str:
    return value if isinstance(value, str) and value else "-"  # None and NaN: not recorded
