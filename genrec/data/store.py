"""The event store: one DuckDB file holding platforms, catalog items, events, identity links and user splits.

Imports are transactions (a failed import leaves the store exactly as it was) and idempotent (events already
present, by user, platform, item, timestamp and event, are not added again; items are upserted). They are checked
for references: an event's item must be in its platform's catalog, a link's or a split's user must exist, and the
users of an import tagged with a data set must not already belong to another one (user-id namespaces), unless
the caller says otherwise. The store also keeps data sets defined from imported data (``datasets``).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import duckdb
import pandas as pd

from genrec.config import default_db_path
from genrec.data import timestamps
from genrec.data.cleaning import CleaningConfig, CleaningReport, clean
from genrec.data.dbutil import first_row
from genrec.data.importers import FILE, EventSource, ImportBatch, check_item_duplicates
from genrec.data.readers import LINE
from genrec.data.schema import (
    DATASET_SPLITS,
    EVENT_COLUMNS,
    ITEM_COLUMNS,
    LINK_COLUMNS,
    MAX_TITLE_CHARS,
    SPLIT_COLUMNS,
    TIME_KINDS,
    CatalogItem,
    HistoryItem,
    Platform,
    StoreDataset,
    check_platform_name,
    default_verb,
)
from genrec.errors import DataError, NotFoundError

SCHEMA = """
CREATE TABLE IF NOT EXISTS platforms (
    platform VARCHAR PRIMARY KEY, verb VARCHAR NOT NULL, time_kind VARCHAR NOT NULL, description VARCHAR);
CREATE TABLE IF NOT EXISTS items (
    platform VARCHAR NOT NULL, item_id VARCHAR NOT NULL, title VARCHAR NOT NULL, description VARCHAR,
    category VARCHAR, attributes VARCHAR, year INTEGER, PRIMARY KEY (platform, item_id));
CREATE TABLE IF NOT EXISTS events (
    user_id VARCHAR NOT NULL, platform VARCHAR NOT NULL, item_id VARCHAR NOT NULL, timestamp TIMESTAMP NOT NULL,
    event VARCHAR NOT NULL, value DOUBLE, seq BIGINT NOT NULL, user_key UBIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS links (
    platform VARCHAR NOT NULL, platform_user_id VARCHAR NOT NULL, user_id VARCHAR NOT NULL,
    PRIMARY KEY (platform, platform_user_id));
CREATE TABLE IF NOT EXISTS splits (user_id VARCHAR PRIMARY KEY, split VARCHAR NOT NULL);
CREATE TABLE IF NOT EXISTS platform_templates (platform VARCHAR PRIMARY KEY, source VARCHAR NOT NULL);
CREATE TABLE IF NOT EXISTS imports (
    source VARCHAR, finished TIMESTAMP, events_added BIGINT, items_added BIGINT, report VARCHAR);
CREATE TABLE IF NOT EXISTS user_datasets (user_id VARCHAR NOT NULL, dataset VARCHAR NOT NULL,
    PRIMARY KEY (user_id, dataset));
CREATE TABLE IF NOT EXISTS datasets (
    name VARCHAR PRIMARY KEY, platforms VARCHAR[] NOT NULL, split VARCHAR NOT NULL, description VARCHAR);
"""
SHOWN = 5  # rows named in a referential error


# Per-user reads find a user's events through ``user_key`` = hash(user_id), not an index: every import inserts its
# events ordered by it, so each row group holds a narrow key range and DuckDB's min/max statistics (zonemaps) of
# the integer column skip all row groups but the one or two holding the user (VARCHAR statistics would not do: they
# keep only a short prefix, 12 bytes in DuckDB 2.0, which prefixed ids share). An ART index over every event costs
# ~70 bytes a row in memory (7.5 GiB to build at 100M events); the key costs next to nothing on disk (RLE runs).
# The key is derived data: a store whose keys do not match this DuckDB's hash (written by an older genrec, which
# kept an index instead, or a DuckDB whose hash changed) is rewritten when opened for writing (``_rekey``).
USER_KEY = "hash(user_id)"
EVENT_FIELDS = "user_id, platform, item_id, timestamp, event, value, seq"
BULK_ROWS = 200_000  # from this many staged events on, an import runs under BULK_SETTINGS
# DuckDB settings while a bulk import runs: a bounded buffer pool (staging and hash tables spill to the store's
# temporary directory beyond it) and no insertion-order bookkeeping (arrival order is kept in ``_seq``)
BULK_SETTINGS = {"memory_limit": "1GB", "preserve_insertion_order": "false"}


@dataclass
class ImportReport:
    source: str
    events_in: int = 0
    events_added: int = 0
    events_present: int = 0
    items_added: int = 0
    items_updated: int = 0
    links_added: int = 0
    splits_set: int = 0
    skipped_rows: int = 0
    platforms_added: list[str] = field(default_factory=list)
    cleaning: CleaningReport = field(default_factory=CleaningReport)
    seconds: float = 0.0
    dataset: str | None = None
    unknown_items_created: int = 0  # items named by events but missing from the catalog (allow_unknown_items)
    events_with_unknown_items: int = 0
    unknown_users: int = 0  # users named by links or splits without events (allow_unknown_users)
    users_shared: int = 0  # users that already belonged to another data set (same_people)

    @property
    def warnings(self) -> list[str]:
        """What was accepted although it looks wrong (only when the caller allowed it)."""
        out = []
        if self.unknown_items_created:
            out.append(f"{self.events_with_unknown_items:,} events named {self.unknown_items_created:,} items "
                       "missing from their platform's catalog: created with an empty title")
        if self.unknown_users:
            out.append(f"{self.unknown_users:,} link or split entries name users without events")
        if self.users_shared:
            out.append(f"{self.users_shared:,} users already belonged to another data set and now also belong to "
                       f"{self.dataset!r} (same people)")
        return out


class Store:
    """A DuckDB-backed event store. Use as a context manager or call :meth:`close`.

    Each thread gets its own cursor, so one Store can serve a multi-threaded server.
    """

    def __init__(self, path: str | Path | None = None, *, read_only: bool = False) -> None:
        self.path = Path(path) if path is not None else default_db_path()
        if str(self.path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._root = duckdb.connect(str(self.path), read_only=read_only)
        except duckdb.IOException as exc:
            raise DataError(f"cannot open the store ({exc})", file=self.path) from exc
        if not read_only:
            self._root.execute(SCHEMA)
        # whether reads can select a user's events by key (an old store opened read-only: by user_id alone)
        self._keyed = _keyed(self._root)
        if not read_only and not self._keyed:
            _rekey(self._root)
            self._keyed = True
        self._local = threading.local()
        self._write_lock = threading.Lock()
        # platform -> item_id -> (title, category); a Store is the file's only writer, so writes invalidate it
        self._titles: dict[str, dict[str, tuple[str, str | None]]] = {}
        # bumped by every committed write: what readers key their caches (catalog indexes, popularity) on
        self.version = 0

    # -- connection handling -------------------------------------------------------------------------
    @property
    def con(self) -> duckdb.DuckDBPyConnection:
        cur = getattr(self._local, "cur", None)
        if cur is None:
            cur = self._local.cur = self._root.cursor()
        return cur

    def close(self) -> None:
        self._root.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing -------------------------------------------------------------------------------------
    def add_platform(self, platform: Platform, *, replace: bool = False) -> None:
        check_platform_name(platform.name)
        if platform.time_kind not in TIME_KINDS:
            raise DataError(f"unknown time kind {platform.time_kind!r}", field="time_kind",
                            expected=" or ".join(TIME_KINDS))
        verb = "INSERT OR REPLACE" if replace else "INSERT OR IGNORE"
        self.con.execute(f"{verb} INTO platforms VALUES (?, ?, ?, ?)",
                         [platform.name, platform.verb, platform.time_kind, platform.description])
        self.version += 1

    def set_platform(self, name: str, *, verb: str | None = None, time_kind: str | None = None,
                     description: str | None = None) -> tuple[Platform, bool]:
        """Create the platform, or change the given fields of an existing one; returns it and whether it is new."""
        try:
            current = self.platform(name)
        except NotFoundError:
            current = None
        if current is None:
            platform = Platform(name, verb or default_verb(name), time_kind or "time", description)
        else:
            platform = Platform(name, verb or current.verb, time_kind or current.time_kind,
                                description if description is not None else current.description)
        self.add_platform(platform, replace=True)
        self._titles.clear()
        return platform, current is None

    def ingest(self, batch: ImportBatch, cleaning: CleaningConfig | None = None, *,
               create_platforms: bool = False, allow_unknown_items: bool = False, allow_unknown_users: bool = False,
               same_people: bool = False, user_prefix: str | None = None) -> ImportReport:
        """Import a batch in one transaction; on any error the store is left unchanged.

        ``create_platforms`` registers platforms the batch names but does not declare (with ``batch.verb`` /
        ``batch.time_kind``); ``allow_unknown_items`` creates catalog items that events name but no catalog has
        (empty title, counted) instead of failing; ``allow_unknown_users`` keeps links and splits naming users
        without events (counted); ``same_people`` lets a batch tagged with a data set claim users that belong to
        another data set (they then belong to both); ``user_prefix`` scopes the batch's user ids (events, links'
        both ids, splits) by prepending it, so two data sets with the same ids stay apart.
        """
        started = time.perf_counter()
        cleaning = cleaning or CleaningConfig()
        report = ImportReport(source=batch.source, skipped_rows=batch.skipped_rows, dataset=batch.dataset)
        checks = {"allow_unknown_items": allow_unknown_items, "allow_unknown_users": allow_unknown_users,
                  "same_people": same_people, "user_prefix": user_prefix}
        con = self.con
        bulk = batch.events is not None and len(batch.events) >= BULK_ROWS
        with self._write_lock, _bulk_settings(con, bulk):
            con.execute("BEGIN TRANSACTION")
            try:
                self._ingest(con, batch, cleaning, create_platforms, report, **checks)
                con.execute("DROP TABLE IF EXISTS stage_events")  # a streamed stage is not temporary: never commit it
                con.execute("INSERT INTO imports VALUES (?, now(), ?, ?, ?)",
                            [batch.source, report.events_added, report.items_added,
                             _summary(report)])
                con.execute("COMMIT")
                self._titles.clear()
                self.version += 1
            except BaseException:
                con.execute("ROLLBACK")
                raise
            finally:
                for table in ("stage_events", "stage_items", "stage_links", "stage_splits", "stage_unknown",
                              "stage_users", "stage_dups"):
                    con.execute(f"DROP TABLE IF EXISTS {table}")
        report.seconds = time.perf_counter() - started
        return report

    def _ingest(self, con: duckdb.DuckDBPyConnection, batch: ImportBatch, cleaning: CleaningConfig,
                create_platforms: bool, report: ImportReport, *, allow_unknown_items: bool,
                allow_unknown_users: bool, same_people: bool, user_prefix: str | None) -> None:
        for platform in batch.platforms:
            if first_row(con.execute("SELECT 1 FROM platforms WHERE platform = ?", [platform.name])) is None:
                self.add_platform(platform)
                report.platforms_added.append(platform.name)
        report.skipped_rows += self._stage(con, batch)
        _check_staged(con)
        if user_prefix:
            for table, columns in (("stage_events", ("user_id",)), ("stage_links", ("user_id", "platform_user_id")),
                                   ("stage_splits", ("user_id",))):
                con.execute(f"UPDATE {table} SET " + ", ".join(f"{c} = ? || {c}" for c in columns),
                            [user_prefix] * len(columns))
        for table, what in (("stage_events", "event"), ("stage_items", "item")):
            unknown = first_row(con.execute(
                f"""SELECT platform, _file, _line FROM {table} WHERE platform NOT IN (SELECT platform FROM platforms)
                    ORDER BY _seq LIMIT 1"""))
            if unknown is None:
                continue
            if not create_platforms:
                known = ", ".join(p.name for p in self.platforms()) or "none yet"
                raise DataError(f"{what} for unknown platform {unknown[0]!r}", file=unknown[1], line=unknown[2],
                                field="platform",
                                expected=f"a registered platform ({known}); register it first (`genrec platform "
                                         f"set {unknown[0]} --verb VERB --time-kind time|sequence`) or pass "
                                         "--create-platforms")
            for name, file, line in con.execute(f"""SELECT platform, min_by(_file, _seq), min_by(_line, _seq)
                    FROM {table} WHERE platform NOT IN (SELECT platform FROM platforms)
                    GROUP BY platform ORDER BY 1""").fetchall():
                check_platform_name(name, file=file, line=line, field="platform")
                self.add_platform(Platform(name, batch.verb or default_verb(name), batch.time_kind or "time"))
                report.platforms_added.append(name)
        self._check_items(con, report, allow_unknown_items)
        self._check_users(con, batch.source, report, allow_unknown_users)
        report.events_in = first_row(con.execute("SELECT count(*) FROM stage_events"))[0]
        report.cleaning = clean(con, cleaning)
        if batch.dataset:
            self._claim_users(con, batch.dataset, report, same_people)
        report.events_added, report.events_present = self._insert_events(con)
        report.items_added, report.items_updated = self._upsert_items(con)
        if report.unknown_items_created:
            con.execute("""INSERT INTO items SELECT platform, item_id, '', NULL, NULL, NULL, NULL FROM stage_unknown
                           ON CONFLICT DO NOTHING""")
        report.links_added = first_row(con.execute(
            """INSERT INTO links SELECT DISTINCT platform, platform_user_id, user_id FROM stage_links
               ON CONFLICT DO UPDATE SET user_id = excluded.user_id"""))[0]
        report.splits_set = first_row(con.execute(
            """INSERT INTO splits SELECT DISTINCT user_id, split FROM stage_splits
               ON CONFLICT DO UPDATE SET split = excluded.split"""))[0]
        for platform, source in batch.templates.items():
            con.execute("INSERT OR REPLACE INTO platform_templates VALUES (?, ?)", [platform, source])

    @staticmethod
    def _check_items(con: duckdb.DuckDBPyConnection, report: ImportReport, allow: bool) -> None:
        """Events whose item is in neither the store's nor this batch's catalog of its platform: an error naming
        the first rows, or (``allow``) items to create with an empty title."""
        con.execute("""CREATE TEMP TABLE stage_unknown AS
            SELECT platform, item_id, count(*) AS n, min(_seq) AS first FROM stage_events s
            WHERE NOT EXISTS (SELECT 1 FROM items i WHERE i.platform = s.platform AND i.item_id = s.item_id)
              AND NOT EXISTS (SELECT 1 FROM stage_items t WHERE t.platform = s.platform AND t.item_id = s.item_id)
            GROUP BY platform, item_id""")
        items, events = first_row(con.execute("SELECT count(*), coalesce(sum(n), 0) FROM stage_unknown"))
        if not items:
            return
        if allow:
            report.unknown_items_created, report.events_with_unknown_items = int(items), int(events)
            return
        rows = con.execute(f"""SELECT s._file, s._line, s.platform, s.item_id FROM stage_events s
            SEMI JOIN stage_unknown u ON u.platform = s.platform AND u.item_id = s.item_id
            ORDER BY s._seq LIMIT {SHOWN}""").fetchall()
        named = ", ".join(f"line {line} ({platform} item {item!r})" for _, line, platform, item in rows)
        raise DataError(f"{events:,} event(s) name {items:,} item(s) missing from their platform's catalog: {named}"
                        + (" ..." if events > SHOWN else ""), file=rows[0][0], field="item_id",
                        expected="items of the platform's catalog: import the catalog first (--kind items), or "
                                 "pass --allow-unknown-items to create them with an empty title")

    @staticmethod
    def _check_users(con: duckdb.DuckDBPyConnection, source: str, report: ImportReport, allow: bool) -> None:
        """Links and splits must name users that have events (in the store or this batch): a link's user, or the
        platform account it links, has events; a split's user has events or a link of this batch."""
        known = """(SELECT user_id FROM stage_events UNION SELECT user_id FROM events
                    UNION SELECT user_id FROM links)"""
        checks = (
            ("identity links", f"""SELECT DISTINCT l.user_id FROM stage_links l WHERE l.user_id NOT IN {known}
                AND NOT EXISTS (SELECT 1 FROM stage_events e WHERE e.platform = l.platform
                                AND e.user_id = l.platform_user_id)"""),
            ("splits", f"""SELECT DISTINCT user_id FROM stage_splits WHERE user_id NOT IN {known}
                AND user_id NOT IN (SELECT user_id FROM stage_links)"""),  # links were checked first
        )
        for what, sql in checks:
            table = "stage_links" if what == "identity links" else "stage_splits"
            if first_row(con.execute(f"SELECT count(*) FROM {table}"))[0] == 0:
                continue  # nothing to check: skip reading every user id of the store
            users = [r[0] for r in con.execute(f"{sql} ORDER BY 1").fetchall()]
            if not users:
                continue
            if allow:
                report.unknown_users += len(users)
                continue
            named = ", ".join(repr(u) for u in users[:SHOWN]) + (" ..." if len(users) > SHOWN else "")
            raise DataError(f"{what} name {len(users):,} user(s) without events: {named}", file=source,
                            field="user_id", expected="users with events: import their events first, or pass "
                                                      "--allow-unknown-users")

    @staticmethod
    def _claim_users(con: duckdb.DuckDBPyConnection, dataset: str, report: ImportReport, same_people: bool) -> None:
        """Tag the batch's users with ``dataset``; users that belong to another data set only are refused unless
        they are the same people (``same_people``)."""
        con.execute("""CREATE OR REPLACE TEMP TABLE stage_users AS SELECT user_id FROM stage_events
                       UNION SELECT user_id FROM stage_splits UNION SELECT user_id FROM stage_links""")
        taken = con.execute("""SELECT u.user_id, min(d.dataset) FROM stage_users u JOIN user_datasets d USING (user_id)
            WHERE NOT EXISTS (SELECT 1 FROM user_datasets m WHERE m.user_id = u.user_id AND m.dataset = ?)
            GROUP BY 1 ORDER BY 1""", [dataset]).fetchall()
        if taken and not same_people:
            named = ", ".join(repr(u) for u, _ in taken[:SHOWN]) + (" ..." if len(taken) > SHOWN else "")
            others = ", ".join(sorted({d for _, d in taken}))
            raise DataError(f"{len(taken):,} user id(s) of data set {dataset!r} already belong to data set(s) "
                            f"{others}: {named}", field="user_id",
                            expected="user ids new to the store: if they are the same people pass --same-people; "
                                     "if not, scope this data set's ids with --user-prefix PREFIX")
        report.users_shared = len(taken)
        con.execute("INSERT INTO user_datasets SELECT user_id, ? FROM stage_users ON CONFLICT DO NOTHING", [dataset])
        con.execute("DROP TABLE stage_users")

    @staticmethod
    def _stage(con: duckdb.DuckDBPyConnection, batch: ImportBatch) -> int:
        """Copy the batch into temporary stage_* tables with canonical types (and arrival order ``_seq``); returns
        the bad event rows skipped (``skip_bad_rows`` of an :class:`EventSource`)."""
        events = batch.events if batch.events is not None else _empty(EVENT_COLUMNS)
        skipped = _stage_source(con, events) if isinstance(events, EventSource) else None
        items = batch.items if batch.items is not None else _empty(ITEM_COLUMNS)
        if len(items):
            items, _ = check_item_duplicates(items, skip_bad_rows=False)
        links = batch.links if batch.links is not None else _empty(LINK_COLUMNS)
        splits = batch.splits if batch.splits is not None else _empty(SPLIT_COLUMNS)
        if skipped is None:
            con.register("_ev", events)
            con.execute(f"""CREATE TEMP TABLE stage_events AS SELECT
            CAST(user_id AS VARCHAR) AS user_id, CAST(platform AS VARCHAR) AS platform,
            CAST(item_id AS VARCHAR) AS item_id, CAST(timestamp AS TIMESTAMP) AS timestamp,
            CAST(event AS VARCHAR) AS event, CAST(value AS DOUBLE) AS value,
            CAST({FILE} AS VARCHAR) AS _file, CAST({LINE} AS BIGINT) AS _line,
            row_number() OVER () AS _seq, false AS _final FROM _ev""")
            con.unregister("_ev")
        con.register("_it", items)
        con.execute(f"""CREATE TEMP TABLE stage_items AS SELECT CAST(platform AS VARCHAR) platform,
            CAST(item_id AS VARCHAR) item_id, CAST(title AS VARCHAR) title, CAST(description AS VARCHAR)
            description, CAST(category AS VARCHAR) category, CAST(attributes AS VARCHAR) attributes,
            CAST(year AS INTEGER) AS year, CAST({FILE} AS VARCHAR) AS _file, CAST({LINE} AS BIGINT) AS _line,
            row_number() OVER () AS _seq FROM _it""")
        con.register("_ln", links)
        con.execute("""CREATE TEMP TABLE stage_links AS SELECT CAST(platform AS VARCHAR) platform,
            CAST(platform_user_id AS VARCHAR) platform_user_id, CAST(user_id AS VARCHAR) user_id FROM _ln""")
        con.register("_sp", splits)
        con.execute("""CREATE TEMP TABLE stage_splits AS SELECT CAST(user_id AS VARCHAR) user_id,
            CAST(split AS VARCHAR) split FROM _sp""")
        for name in ("_it", "_ln", "_sp"):
            con.unregister(name)
        return skipped or 0

    @staticmethod
    def _insert_events(con: duckdb.DuckDBPyConnection) -> tuple[int, int]:
        """Add staged events not already present (by user, platform, item, timestamp and event), ordered by user key
        (see ``USER_KEY``). The store's events are first narrowed to the batch's users' keys: for a small batch
        the key's zonemaps then skip nearly the whole table instead of joining all of it."""
        staged = first_row(con.execute("SELECT count(*) FROM stage_events"))[0]
        base = first_row(con.execute("SELECT coalesce(max(seq), 0) FROM events"))[0]
        added = first_row(con.execute(
            f"""INSERT INTO events
               SELECT s.user_id, s.platform, s.item_id, s.timestamp, s.event, s.value, ? + s._seq, {USER_KEY}
               FROM stage_events s
               WHERE NOT EXISTS (SELECT 1 FROM (SELECT * FROM events WHERE user_key IN (
                       SELECT {USER_KEY} FROM stage_events)) e
                   WHERE e.user_id = s.user_id AND e.platform = s.platform AND e.item_id = s.item_id
                   AND e.timestamp = s.timestamp AND e.event = s.event)
               ORDER BY 8""",
            [base]))[0]
        return added, staged - added

    @staticmethod
    def _upsert_items(con: duckdb.DuckDBPyConnection) -> tuple[int, int]:
        new = first_row(con.execute("""SELECT count(*) FROM stage_items s WHERE NOT EXISTS
            (SELECT 1 FROM items i WHERE i.platform = s.platform AND i.item_id = s.item_id)"""))[0]
        changed = first_row(con.execute("""SELECT count(*) FROM stage_items s JOIN items i USING (platform, item_id)
            WHERE (i.title, i.description, i.category, i.attributes, i.year) IS DISTINCT FROM
                  (s.title, s.description, s.category, s.attributes, s.year)"""))[0]
        con.execute("""INSERT INTO items SELECT platform, item_id, title, description, category, attributes, year
            FROM stage_items ON CONFLICT DO UPDATE SET
            title = excluded.title, description = excluded.description, category = excluded.category,
            attributes = excluded.attributes, year = excluded.year""")
        return new, changed

    # -- reading -------------------------------------------------------------------------------------
    def platforms(self) -> list[Platform]:
        rows = self.con.execute("SELECT platform, verb, time_kind, description FROM platforms ORDER BY 1")
        return [Platform(*r) for r in rows.fetchall()]

    def platform(self, name: str) -> Platform:
        row = first_row(self.con.execute(
            "SELECT platform, verb, time_kind, description FROM platforms WHERE platform = ?", [name]))
        if row is None:
            known = ", ".join(p.name for p in self.platforms()) or "none"
            raise NotFoundError(f"unknown platform {name!r}; the store has: {known}")
        return Platform(*row)

    def platform_template(self, platform: str) -> str | None:
        """The platform's own recommend prompt template (Jinja2 source), registered at onboarding, if any."""
        row = first_row(self.con.execute("SELECT source FROM platform_templates WHERE platform = ?", [platform]))
        return row[0] if row is not None else None

    def users(self, platform: str | None = None) -> list[str]:
        where, params = ("WHERE platform = ?", [platform]) if platform else ("", [])
        rows = self.con.execute(f"SELECT DISTINCT user_id FROM events {where} ORDER BY 1", params)
        return [r[0] for r in rows.fetchall()]

    def has_events(self, platform: str) -> bool:
        return first_row(self.con.execute("SELECT 1 FROM events WHERE platform = ? LIMIT 1", [platform])) is not None

    def has_user(self, user_id: str) -> bool:
        return first_row(self.con.execute(f"SELECT 1 FROM events WHERE {self._user_is()} LIMIT 1",
                                          self._user_params(user_id))) is not None

    def _user_is(self) -> str:
        """The filter on one user's events (its parameters: ``_user_params``): by key, which zonemaps prune."""
        return "user_key = hash(?) AND user_id = ?" if self._keyed else "user_id = ?"

    def _user_params(self, user_id: str) -> list:
        return [user_id, user_id] if self._keyed else [user_id]

    def users_in(self, user_ids: Sequence[str]) -> tuple[str, list]:
        """A filter on ``events`` selecting the events of ``user_ids``, and its parameters."""
        if self._keyed:
            return ("user_key IN (SELECT hash(unnest(?))) AND user_id IN (SELECT unnest(?))",
                    [list(user_ids), list(user_ids)])
        return "user_id IN (SELECT unnest(?))", [list(user_ids)]

    def history(self, user_id: str, platform: str | None = None, before: datetime | None = None,
                limit: int | None = None) -> list[HistoryItem]:
        """A user's events across platforms (or one), in time order, optionally strictly before a time.

        ``limit`` keeps the most recent events.
        """
        sql = f"SELECT user_id, platform, item_id, timestamp, event, value FROM events WHERE {self._user_is()}"
        params: list = self._user_params(user_id)
        if platform is not None:
            sql += " AND platform = ?"
            params.append(platform)
        if before is not None:
            sql += " AND timestamp < ?"
            params.append(before)
        sql += " ORDER BY timestamp DESC, seq DESC"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        rows = self.con.execute(sql, params).fetchall()
        out = []
        for user, plat, item, ts, event, value in reversed(rows):
            title, category = self._item_titles(plat).get(item, (None, None))
            out.append(HistoryItem(user, plat, item, ts, event, value, title, category))
        return out

    def user_items(self, user_ids: Sequence[str]) -> dict[str, set[tuple[str, str]]]:
        """The distinct (platform, item) pairs each of ``user_ids`` has events for (users without events: empty)."""
        out: dict[str, set[tuple[str, str]]] = {user: set() for user in user_ids}
        if out:
            where, params = self.users_in(list(out))
            rows = self.con.execute(f"SELECT DISTINCT user_id, platform, item_id FROM events WHERE {where}",
                                    params).fetchall()
            for user, platform, item in rows:
                out[user].add((platform, item))
        return out

    def titles(self, platform: str) -> dict[str, str]:
        """The platform's item titles by id (cached until the next write)."""
        return {item: title for item, (title, _) in self._item_titles(platform).items()}

    def _item_titles(self, platform: str) -> dict[str, tuple[str, str | None]]:
        titles = self._titles.get(platform)
        if titles is None:
            rows = self.con.execute("SELECT item_id, title, category FROM items WHERE platform = ?",
                                    [platform]).fetchall()
            titles = self._titles[platform] = {i: (t, c) for i, t, c in rows}
        return titles

    def events(self, platforms: list[str] | None = None) -> pd.DataFrame:
        """All events (optionally of some platforms) ordered by user, time and arrival."""
        where, params = ("WHERE list_contains(?, platform)", [platforms]) if platforms else ("", [])
        return self.con.execute(
            f"SELECT user_id, platform, item_id, timestamp, event, value, seq FROM events {where} "
            "ORDER BY user_id, timestamp, seq", params).df()

    def events_since(self, platforms: Sequence[str], after: datetime, *, whole: Sequence[str] = (),
                     users: Sequence[str] = ()) -> pd.DataFrame:
        """Every event of ``platforms`` of the users who have one after ``after``, one on a platform of ``whole``,
        or are among ``users``: their whole histories on ``platforms``, ordered like ``events``."""
        recent, params = "timestamp > ?", [list(platforms), list(platforms), after]
        if whole:
            recent, params = f"({recent} OR list_contains(?, platform))", [*params, list(whole)]
        named = ""
        if users:
            named, params = "UNION SELECT unnest(?)", [*params, list(users)]
        return self.con.execute(
            f"""SELECT user_id, platform, item_id, timestamp, event, value, seq FROM events
                WHERE list_contains(?, platform) AND user_id IN (
                    SELECT user_id FROM events WHERE list_contains(?, platform) AND {recent} {named})
                ORDER BY user_id, timestamp, seq""", params).df()

    def catalog(self, platform: str) -> pd.DataFrame:
        self.platform(platform)
        return self.con.execute(
            "SELECT item_id, title, description, category, attributes, year FROM items WHERE platform = ? "
            "ORDER BY item_id", [platform]).df()

    def catalog_sizes(self) -> dict[str, int]:
        """Catalog items per platform (platforms without items are left out)."""
        return dict(self.con.execute("SELECT platform, count(*) FROM items GROUP BY 1 ORDER BY 1").fetchall())

    def items(self, platform: str, item_ids: list[str]) -> list[CatalogItem]:
        rows = self.con.execute(
            "SELECT platform, item_id, title, description, category, attributes, year FROM items "
            "WHERE platform = ? AND list_contains(?, item_id)", [platform, item_ids]).fetchall()
        found = {r[1]: CatalogItem(*r) for r in rows}
        return [found[i] for i in item_ids if i in found]

    def popularity(self, platform: str, before: datetime | None = None) -> pd.DataFrame:
        """Interaction counts per item of a platform (optionally only events strictly before a time)."""
        where, params = "platform = ?", [platform]
        if before is not None:
            where += " AND timestamp < ?"
            params.append(before)
        return self.con.execute(
            f"SELECT item_id, count(*) AS count, count(DISTINCT user_id) AS users FROM events WHERE {where} "
            "GROUP BY item_id ORDER BY count DESC, item_id", params).df()

    def user_overlap(self) -> pd.DataFrame:
        """Square matrix: users active on both platforms (diagonal: users of the platform)."""
        rows = self.con.execute(
            """WITH up AS (SELECT DISTINCT user_id, platform FROM events)
               SELECT a.platform AS a, b.platform AS b, count(*) AS users FROM up a JOIN up b USING (user_id)
               GROUP BY 1, 2""").df()
        names = [p.name for p in self.platforms()]
        matrix = rows.pivot(index="a", columns="b", values="users") if len(rows) else pd.DataFrame()
        return matrix.reindex(index=names, columns=names).fillna(0).astype("int64")

    def splits(self) -> dict[str, str]:
        return dict(self.con.execute("SELECT user_id, split FROM splits").fetchall())

    # -- data sets defined in the store and user-id namespaces ---------------------------------------
    def _has_table(self, name: str) -> bool:
        """Whether ``name`` exists (a store written by an older genrec, opened read-only, may lack new tables)."""
        return first_row(self.con.execute("SELECT 1 FROM duckdb_tables() WHERE table_name = ?", [name])) is not None

    def register_dataset(self, dataset: StoreDataset) -> None:
        """Define (or redefine) a data set of the store's platforms; see ``genrec.data.loading.register``."""
        if dataset.split not in DATASET_SPLITS:
            raise DataError(f"unknown split source {dataset.split!r}", field="split", expected=" or ".join(
                DATASET_SPLITS))
        self.con.execute("INSERT OR REPLACE INTO datasets VALUES (?, ?, ?, ?)",
                         [dataset.name, list(dataset.platforms), dataset.split, dataset.description])
        self.version += 1

    def datasets(self) -> list[StoreDataset]:
        if not self._has_table("datasets"):
            return []
        rows = self.con.execute("SELECT name, platforms, split, description FROM datasets ORDER BY 1").fetchall()
        return [StoreDataset(name, tuple(platforms), split, description)
                for name, platforms, split, description in rows]

    def dataset(self, name: str) -> StoreDataset | None:
        return next((d for d in self.datasets() if d.name == name), None)

    def namespace_users(self, dataset: str) -> int:
        """How many users belong to ``dataset`` (imports tagged with it)."""
        if not self._has_table("user_datasets"):
            return 0
        return first_row(self.con.execute("SELECT count(*) FROM user_datasets WHERE dataset = ?", [dataset]))[0]

    def namespaces(self) -> pd.DataFrame:
        """Per data set (user-id namespace): its users, their events and the platforms they are on."""
        if not self._has_table("user_datasets"):
            return pd.DataFrame(columns=["dataset", "users", "events", "platforms"])
        return self.con.execute("""SELECT d.dataset, count(DISTINCT d.user_id) AS users, count(e.user_id) AS events,
                   list_sort(list_distinct(list(e.platform))) AS platforms
            FROM user_datasets d LEFT JOIN events e USING (user_id) GROUP BY 1 ORDER BY 1""").df()

    def namespace_overlap(self) -> pd.DataFrame:
        """Square matrix: users that belong to both data sets (diagonal: the data set's users)."""
        frame = self.namespaces()
        names = frame["dataset"].tolist()
        if not names:
            return pd.DataFrame()
        rows = self.con.execute("""SELECT a.dataset AS a, b.dataset AS b, count(*) AS users
            FROM user_datasets a JOIN user_datasets b USING (user_id) GROUP BY 1, 2""").df()
        matrix = rows.pivot(index="a", columns="b", values="users")
        return matrix.reindex(index=names, columns=names).fillna(0).astype("int64")

    def links(self) -> pd.DataFrame:
        return self.con.execute("SELECT * FROM links ORDER BY 1, 2").df()

    def export_parquet(self, directory: str | Path) -> list[Path]:
        """Write every table to ``directory/<table>.parquet``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        written = []
        for table in ("platforms", "items", "events", "links", "splits"):
            target = directory / f"{table}.parquet"
            columns = EVENT_FIELDS if table == "events" else "*"  # the user key is derived: not exported
            self.con.execute(f"COPY (SELECT {columns} FROM {table}) TO '{_sql_path(target)}' (FORMAT parquet)")
            written.append(target)
        return written


def _keyed(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether the events carry user keys of this DuckDB's hash (checked on one row: a change of the hash function
    changes them all; an empty table is keyed)."""
    if first_row(con.execute("""SELECT 1 FROM duckdb_columns() WHERE table_name = 'events'
                                AND column_name = 'user_key'""")) is None:
        return False
    row = first_row(con.execute(f"SELECT user_key = {USER_KEY} FROM events LIMIT 1"))
    return row is None or bool(row[0])


def _rekey(con: duckdb.DuckDBPyConnection) -> None:
    """Rewrite the events with (new) user keys, ordered by them, in one transaction; the user index of a store
    written by an older genrec goes with the old table. Runs under the bulk settings (the sort spills)."""
    with _bulk_settings(con):
        con.execute("BEGIN TRANSACTION")
        try:
            con.execute("DROP INDEX IF EXISTS events_user")
            con.execute("ALTER TABLE events RENAME TO events_old")
            con.execute(SCHEMA)  # the events table anew
            con.execute(f"INSERT INTO events SELECT {EVENT_FIELDS}, {USER_KEY} FROM events_old ORDER BY 8")
            con.execute("DROP TABLE events_old")
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise


@contextlib.contextmanager
def _bulk_settings(con: duckdb.DuckDBPyConnection, on: bool = True) -> Iterator[None]:
    """``BULK_SETTINGS`` while the block runs (when ``on``), the connection's own settings again after it."""
    saved = {name: first_row(con.execute("SELECT current_setting(?)", [name]))[0] for name in BULK_SETTINGS} \
        if on else {}
    try:
        for name, value in BULK_SETTINGS.items() if on else ():
            con.execute(f"SET {name} = '{value}'")
        yield
    finally:
        for name, value in saved.items():
            con.execute(f"SET {name} = '{value}'")


def _stage_source(con: duckdb.DuckDBPyConnection, source: EventSource) -> int:
    """Stream an unread file's (or a large read table's) events into ``stage_events`` (DuckDB reads it: nothing
    passes through Python) and check them there; returns the bad rows dropped (``skip_bad_rows``), else raises
    for the first one."""
    path = "'" + str(source.path).replace("'", "''") + "'"
    # one file: its path is a constant and the line the arrival order, so neither takes room per row. The stage is
    # a table of the store, not a temporary one: DuckDB writes its full row groups compressed to free blocks of the
    # file as they come (a temporary table stays uncompressed and spills), and the import drops it before COMMIT,
    # so it is never visible and a crash leaves only unreferenced blocks
    con.execute(f"""CREATE TABLE stage_events (user_id VARCHAR, platform VARCHAR, item_id VARCHAR,
        timestamp TIMESTAMP, event VARCHAR, value DOUBLE, {LINE} BIGINT, _bad INTEGER, _final BOOLEAN DEFAULT false,
        {FILE} VARCHAR GENERATED ALWAYS AS ({path}) VIRTUAL, _seq BIGINT GENERATED ALWAYS AS ({LINE}) VIRTUAL)""")
    zone = first_row(con.execute("SELECT current_setting('TimeZone')"))[0]
    con.execute("SET TimeZone = 'UTC'")  # the timestamp expressions read offsets and native times as UTC
    if source.arrow is not None:
        con.register(source.scan, source.arrow)
    try:
        con.execute(f"INSERT INTO stage_events (user_id, platform, item_id, timestamp, event, value, {LINE}, _bad) "
                    + source.sql())
        skipped = source.reject(con, "stage_events")
    except (duckdb.IOException, duckdb.InvalidInputException) as exc:
        raise DataError(f"cannot read the file ({exc})", file=source.path) from exc
    finally:
        con.execute(f"SET TimeZone = '{zone}'")
        if source.arrow is not None:
            con.unregister(source.scan)
    if skipped:
        con.execute("DELETE FROM stage_events WHERE _bad IS NOT NULL")
    return skipped


def _check_staged(con: duckdb.DuckDBPyConnection) -> None:
    """The last guard before writing: no timestamp that a later read cannot handle, no oversized title."""
    bad = first_row(con.execute(f"""SELECT _file, _line, CAST(timestamp AS VARCHAR) FROM stage_events
        WHERE {timestamps.out_of_range('timestamp')} ORDER BY _seq LIMIT 1"""))
    if bad is not None:
        raise DataError(f"invalid timestamp {bad[2] or '(empty)'}", file=bad[0], line=bad[1], field="timestamp",
                        expected=f"a timestamp {timestamps.RANGE}")
    long = first_row(con.execute("""SELECT _file, _line, length(title) FROM stage_items WHERE length(title) > ?
        ORDER BY _seq LIMIT 1""", [MAX_TITLE_CHARS]))
    if long is not None:
        raise DataError(f"title of {long[2]:,} characters", file=long[0], line=long[1], field="title",
                        expected=f"at most {MAX_TITLE_CHARS:,} characters")


def _empty(columns: tuple[str, ...]) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="object") for c in columns}
                        | {FILE: pd.Series(dtype="object"), LINE: pd.Series(dtype="int64")})


def _sql_path(path: Path) -> str:
    return str(path).replace("'", "''")


def _summary(report: ImportReport) -> str:
    rules = "; ".join(f"{r.rule}: -{r.removed}" for r in report.cleaning.rules)
    return f"in={report.events_in} added={report.events_added} present={report.events_present} {rules}"
