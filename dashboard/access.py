"""What a dashboard lets its visitors do, set by `gradscope dashboard` through the environment:

- bound beyond loopback (`--host 0.0.0.0`), it is read-only unless started with
  `--allow-writes`: anyone who can reach the port could otherwise queue, cancel, delete and
  import runs;
- CSV paths typed into the New run form must lie under `--data-dir`; without one, a dashboard
  reachable from other machines refuses CSV paths from the form (a visitor could probe which
  files exist on the server, or make it read any file);
- queued runs must fit the parameter budget (`--max-params`, gradscope.vocab.budget).

Run directly (AppTest, `streamlit run`), none of the variables is set: a local, writable
dashboard without a data folder, as before.
"""

from __future__ import annotations

import os
from pathlib import Path

from gradscope.vocab.config import ConfigError, RunConfig, make_config
from gradscope.vocab.protocol import DATA_DIR_ENV, EXPOSED_ENV, WRITES_ENV


def exposed() -> bool:
    return os.environ.get(EXPOSED_ENV) == "1"


def writes_allowed() -> bool:
    return os.environ.get(WRITES_ENV, "1") != "0"


def data_dir() -> Path | None:
    value = os.environ.get(DATA_DIR_ENV)
    return Path(value).expanduser().resolve() if value else None


def form_csv_config(cfg: RunConfig) -> RunConfig:
    """The form's config with its CSV path checked against the data folder (relative paths
    are taken inside it), or ConfigError on the dataset field. Built-in datasets pass."""
    if not cfg.is_csv:
        return cfg
    folder = data_dir()
    if folder is None:
        if exposed():
            raise ConfigError(
                "dataset: CSV files cannot be named from this dashboard: it is reachable from "
                "other machines and has no data folder (start it with --data-dir DIR)"
            )
        return cfg
    path = (folder / Path(cfg.csv_path).expanduser()).resolve()
    if not path.is_relative_to(folder):
        raise ConfigError(f"dataset: CSV files must lie in the data folder {folder}")
    return make_config({**cfg.model_dump(), "dataset": f"csv:{path}"})
