"""The project's own storage errors, with messages meant for people."""


class StorageError(RuntimeError):
    """A database could not be opened, read or written; the message says why."""


class SchemaVersionError(StorageError):
    """The database's schema version is not the one this gradscope writes."""


class NotFoundError(StorageError):
    """A run (or other row) asked for by id does not exist."""
