"""The name, notes and tags editor for one run, shared by the Runs and Compare pages."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from gradscope.dashboard import db_gateway
from gradscope.dashboard.tables import escape_markdown
from gradscope.db.annotate import MAX_NOTES_CHARS, MAX_TAGS_PER_RUN, AnnotationError
from gradscope.vocab.fields import MAX_NAME_CHARS


def annotate_form(run_id: str, runs: pd.DataFrame, *, key: str) -> None:
    """A form that renames `run_id` and replaces its notes and tags. `runs` is
    db_gateway.runs() indexed by id (its tags offer the known tags as choices)."""
    if run_id not in runs.index:
        return
    run = runs.loc[run_id]
    with st.form(f"{key}_{run_id}", border=False):
        name = st.text_input("Name", value=run["name"] or "", max_chars=MAX_NAME_CHARS)
        tags = st.multiselect(
            "Tags",
            sorted({t for have in runs["tags"] for t in have}),
            default=list(run["tags"]),
            accept_new_options=True,  # type a new tag and press Enter
            max_selections=MAX_TAGS_PER_RUN,
        )
        notes = st.text_area("Notes", value=run["notes"] or "", max_chars=MAX_NOTES_CHARS)
        if st.form_submit_button("Save", icon=":material/save:"):
            try:
                db_gateway.annotate_run(run_id, name=name, notes=notes, tags=tags)
            except AnnotationError as exc:
                st.error(escape_markdown(str(exc)))
            else:
                st.toast("Saved")
                st.rerun()
