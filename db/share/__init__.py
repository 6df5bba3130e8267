"""Sharing runs between databases as files, one job a module (this package re-exports nothing):

- `export`: choose runs (`select_run_ids`) and write them to a standalone SQLite file.
- `table_files`: the chosen runs as CSV or Parquet tables, for pandas.
- `importing`: merge a file someone sent into this database (`import_file`, `import_bytes`),
  helped by `source` (open the untrusted file, check its header and structure), `validate`
  (check every row), `digest` (read our runs, compare contents), `batch_writer` (short
  lock-first write transactions), `merge` (names, notes and tags) and `report` (what it did).
- `base`: the tables a run spans, a run in transit, `ShareError` and `ImportRefused`.
"""
