"""Share: download runs as a database file (or CSV tables), and import a teammate's file."""

from __future__ import annotations

import streamlit as st

from gradscope.dashboard import db_gateway, state
from gradscope.dashboard.tables import escape_markdown
from gradscope.db.errors import StorageError

st.title("Share")
runs = db_gateway.runs()

st.subheader("Download runs")
chosen = [i for i in state.selected_runs() if i in set(runs["id"])]
sweeps = runs.dropna(subset=["sweep_id"]).drop_duplicates("sweep_id")
scopes = {"selected": f"The runs selected on the Runs page ({len(chosen)})"}
scopes |= {
    f"sweep:{s}": f"Sweep: {n}"
    for s, n in zip(sweeps["sweep_id"], sweeps["sweep_name"], strict=True)
}
scopes["all"] = f"All runs ({len(runs)})"
scope = st.radio(
    "Which runs",
    list(scopes),
    # Radio labels are Markdown: a sweep's name must show as typed.
    format_func=lambda key: escape_markdown(scopes[key]),
    index=0 if chosen else len(scopes) - 1,
    key="share_scope",
)
if scope == "selected":
    ids = chosen
elif scope == "all":
    ids = list(runs["id"])
else:
    ids = list(runs.loc[runs["sweep_id"] == scope.removeprefix("sweep:"), "id"])
left, right = st.columns(2)
# Callables: the files are built only when someone clicks, not on every rerun.
left.download_button(
    f"Database file (.db) of {len(ids)} run(s)",
    data=lambda: db_gateway.export_db_bytes(ids),
    file_name="gradscope-runs.db",
    mime="application/octet-stream",
    disabled=not ids,
    icon=":material/download:",
    on_click="ignore",
    key="share_download_db",
)
right.download_button(
    f"CSV tables (.zip) of {len(ids)} run(s)",
    data=lambda: db_gateway.export_tables_zip(ids),
    file_name="gradscope-runs-csv.zip",
    mime="application/zip",
    disabled=not ids,
    icon=":material/table:",
    on_click="ignore",
    key="share_download_csv",
)
st.caption(
    "A teammate opens the .db file with `gradscope dashboard --db FILE` or imports it "
    "below; run ids are kept, so importing twice adds nothing."
)

st.subheader("Import runs")
if not db_gateway.writes_allowed():
    st.caption(
        "This dashboard is read-only: import files with `gradscope import FILE` on the machine "
        "that holds the database."
    )
    st.stop()
upload = st.file_uploader(
    "A gradscope database file",
    type=db_gateway.UPLOAD_SUFFIXES,
    max_upload_size=db_gateway.MAX_UPLOAD_MB,
    key="share_upload",
)
dry_run = st.checkbox("Dry run: only report what would be added", key="share_dry_run")
if upload is not None and st.button(
    "Import", type="primary", icon=":material/upload:", key="share_import"
):
    try:
        report = db_gateway.import_db_bytes(upload.getvalue(), upload.name, dry_run)
    except StorageError as exc:
        st.error(f"Nothing was imported.\n\n{escape_markdown(str(exc))}", icon=":material/block:")
    else:
        st.success(
            f"{'Would add' if dry_run else 'Added'} {len(report.added)} run(s); "
            f"{len(report.already_present)} already present, {len(report.conflicting)} "
            f"conflicting, {len(report.refused)} refused."
        )
        # The counts are above; below only what they do not say (each run not added, merged
        # notes and tags). Run names and file names stay plain text.
        details = "\n".join(report.summary.splitlines()[1:])
        if details:
            st.text(details)
