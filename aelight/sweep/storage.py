"""A sweep's Optuna storage: a database several workers and machines share (SQLite on one machine,
PostgreSQL across machines), opened safely and reported in one line when it goes away."""

import re
import time

import optuna

from aelight.errors import AelightError, ConfigError

# how long a worker waits for another's write lock on a SQLite study before it gives up: the
# driver's 5 s was exceeded by eight workers sharing two busy cores, and the worker that gave up
# ended as if the database had gone away
SQLITE_LOCK_WAIT_S = 60


def rdb_storage(url: str, attempts: int = 8, **options) -> "optuna.storages.RDBStorage":
    """Optuna's ``RDBStorage`` at ``url``, also when several machines open a new database at once:
    each then creates Optuna's tables, and on PostgreSQL all but one fail on a type or table the
    first made (a unique-key or duplicate-object error). Creating them is one transaction there,
    so a second try finds them whole and only reads them."""
    import sqlalchemy.exc

    if url.startswith("sqlite"):
        options["engine_kwargs"] = {"connect_args": {"timeout": SQLITE_LOCK_WAIT_S}}
    for attempt in range(attempts):
        try:
            storage = optuna.storages.RDBStorage(url, **options)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.1 * (attempt + 1))
        else:
            if storage.engine.dialect.name == "sqlite":
                writes_one_at_a_time(storage.engine)
            return storage


def writes_one_at_a_time(engine) -> None:
    """Makes each transaction on a SQLite database take its write lock when it begins. SQLite has no
    ``SELECT ... FOR UPDATE``, with which Optuna lets one worker alone take a queued trial: without
    the lock two workers that ask at once both read the trial as waiting and both run it. (SQLAlchemy's
    recipe for SQLite transactions: the driver's own BEGIN off, aelight's ``BEGIN IMMEDIATE`` on.)
    ``rdb_storage`` has each connection wait up to ``SQLITE_LOCK_WAIT_S`` for the lock."""
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def no_driver_begin(dbapi_connection, record) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def begin_with_write_lock(connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections opened while Optuna set up its tables would begin the old way


def open_storage(url: str):
    """Optuna's storage at ``url``; one clear error when it cannot be opened."""
    try:
        return rdb_storage(url)
    except Exception as err:  # SQLAlchemy's and the database drivers' errors have no common base
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError(
            f"--storage {url}: cannot open it as an Optuna storage ({reason}); give a database URL such as "
            "sqlite:///sweep.db or postgresql://user@host/db"
        ) from None


class StorageUnreachable(AelightError):
    """The study's database went away (a server stopped, a network cut) while the sweep ran."""


def is_storage_error(err: BaseException) -> bool:
    """Whether ``err`` (or what it wraps) says the study's database cannot be reached or used."""
    import sqlalchemy.exc

    while err is not None:
        if isinstance(err, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)):
            return True
        if isinstance(err, optuna.exceptions.StorageInternalError):
            return True
        err = err.__cause__ or err.__context__
    return False


def shown_url(url: str) -> str:
    """A storage URL fit to print: its password, if any, left out."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


def unreachable(url: str, err: BaseException) -> StorageUnreachable:
    reason = (str(getattr(err, "orig", None) or err).strip().splitlines() or [type(err).__name__])[0]
    return StorageUnreachable(
        f"the sweep's storage {shown_url(url)} cannot be reached ({reason[:200]}); trials under way were not "
        "recorded as completed: run the same command again when the database is back, and they run again"
    )
