"""Cleaning rules applied to an import's staged events before they reach the store.

Each rule is configurable and reports how many rows it removed (or changed). Rules run inside the import's
transaction on the staging table, in this order:

1. ``drop_event_types``: events of these types (e.g. ``ad_click``) are not interactions;
2. identity links: a platform account id found in the links (of this import, then of the store) becomes the
   unified user id;
3. ``drop_duplicates``: exact duplicates (same user, platform, item, timestamp, event, value);
4. ``min_value``: events whose value is below the threshold (when ratings mean "liked"); events without a
   value are kept;
5. ``max_events_per_minute``: bot-like bursts; every event of a (user, clock minute) with more than N events
   is dropped. Platforms whose timestamps are sequence positions are exempt;
6. ``k_core``: users with fewer than ``k_core_users`` events and items with fewer than ``k_core_items`` events
   are removed, repeatedly until none is left (within this import);
7. ``hash_user_ids``: user ids of this import (events, links, splits) and the platform account ids of its links
   are replaced by a salted SHA-256 digest (:func:`hash_user_id`), so no raw id is stored; ids that came from
   links already in the store are final and kept.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

import duckdb

from genrec.data.dbutil import first_row


@dataclass
class CleaningConfig:
    drop_event_types: tuple[str, ...] = ("ad_click",)
    drop_duplicates: bool = True
    min_value: float | None = None
    max_events_per_minute: int | None = None
    k_core_users: int = 0
    k_core_items: int = 0
    hash_user_ids: bool = False
    salt: str | None = None  # default: $GENREC_SALT

    @classmethod
    def from_dict(cls, data: dict) -> CleaningConfig:
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown cleaning option(s): {', '.join(sorted(unknown))}; "
                             f"known: {', '.join(cls.__dataclass_fields__)}")
        data = dict(data)
        if "drop_event_types" in data:
            data["drop_event_types"] = tuple(data["drop_event_types"] or ())
        return cls(**data)


@dataclass
class RuleReport:
    rule: str
    removed: int
    detail: str = ""


@dataclass
class CleaningReport:
    rules: list[RuleReport] = field(default_factory=list)

    @property
    def removed(self) -> int:
        return sum(r.removed for r in self.rules if r.rule != "identity links")


_DIGEST = "substr(sha256(? || {}), 1, 16)"  # the SQL twin of hash_user_id


def hash_user_id(user_id: str, salt: str) -> str:
    """The salted hash ``hash_user_ids`` stores in place of ``user_id`` (the first 16 hex digits of SHA-256)."""
    return hashlib.sha256((salt + user_id).encode()).hexdigest()[:16]


def _salt(config: CleaningConfig) -> str:
    salt = config.salt or os.environ.get("GENREC_SALT")
    if not salt:
        raise ValueError("hash_user_ids needs a salt: set cleaning.salt or the GENREC_SALT variable")
    return salt


def _delete(con: duckdb.DuckDBPyConnection, where: str, params: list | None = None) -> int:
    before = first_row(con.execute("SELECT count(*) FROM stage_events"))[0]
    con.execute(f"DELETE FROM stage_events WHERE {where}", params or [])
    return before - first_row(con.execute("SELECT count(*) FROM stage_events"))[0]


def clean(con: duckdb.DuckDBPyConnection, config: CleaningConfig) -> CleaningReport:
    """Apply the rules to ``stage_events`` (and ``stage_links``/``stage_splits``) in place."""
    report = CleaningReport()
    types = list(config.drop_event_types)
    removed = _delete(con, "list_contains(?, event)", [types]) if types else 0
    report.rules.append(RuleReport("drop event types", removed, ", ".join(types) or "none configured"))

    # links of this import first, then those already in the store (whose user ids are final: not re-hashed)
    relinked = first_row(con.execute(
        """UPDATE stage_events AS s SET user_id = l.user_id FROM stage_links AS l
           WHERE l.platform = s.platform AND l.platform_user_id = s.user_id AND l.user_id <> s.user_id"""
    ))[0]
    # stored links of a hashed import hold the account id hashed: match it the same way
    account = _DIGEST.format("s.user_id") if config.hash_user_ids else "s.user_id"
    relinked += first_row(con.execute(
        f"""UPDATE stage_events AS s SET user_id = l.user_id, _final = true FROM links AS l
           WHERE l.platform = s.platform AND l.platform_user_id = {account} AND l.user_id <> s.user_id
             AND NOT EXISTS (SELECT 1 FROM stage_links k
                             WHERE k.platform = s.platform AND k.platform_user_id = s.user_id)""",
        [_salt(config)] if config.hash_user_ids else []
    ))[0]
    report.rules.append(RuleReport("identity links", 0, f"{relinked} events re-assigned to linked user ids"))

    if config.drop_duplicates:
        # the groups holding duplicates are few: find them (an aggregate that spills if it must), then delete
        # their later rows by a join against that small set
        keys = ("user_id", "platform", "item_id", "timestamp", "event", "value")
        con.execute(f"""CREATE OR REPLACE TEMP TABLE stage_dups AS SELECT {', '.join(keys)}, min(_seq) AS _keep
            FROM stage_events GROUP BY ALL HAVING count(*) > 1""")
        removed = 0
        if first_row(con.execute("SELECT count(*) FROM stage_dups"))[0]:
            same = " AND ".join(f"d.{k} IS NOT DISTINCT FROM stage_events.{k}" for k in keys)
            removed = _delete(con, f"EXISTS (SELECT 1 FROM stage_dups d WHERE {same} AND d._keep <> stage_events._seq)")
        con.execute("DROP TABLE stage_dups")
        report.rules.append(RuleReport("exact duplicates", removed))

    if config.min_value is not None:
        removed = _delete(con, "value IS NOT NULL AND value < ?", [config.min_value])
        report.rules.append(RuleReport("below-threshold values", removed, f"value < {config.min_value}"))

    if config.max_events_per_minute:
        removed = _delete(con, """(user_id, date_trunc('minute', timestamp)) IN (
            SELECT (e.user_id, date_trunc('minute', e.timestamp)) FROM stage_events e
            JOIN platforms p ON p.platform = e.platform AND p.time_kind = 'time'
            GROUP BY e.user_id, date_trunc('minute', e.timestamp) HAVING count(*) > ?)""",
                          [config.max_events_per_minute])
        report.rules.append(RuleReport("bot-like bursts", removed,
                                       f"> {config.max_events_per_minute} events in one minute"))

    if config.k_core_users or config.k_core_items:
        removed = 0
        while True:
            step = 0
            if config.k_core_users:
                step += _delete(con, """user_id IN (SELECT user_id FROM stage_events GROUP BY user_id
                                        HAVING count(*) < ?)""", [config.k_core_users])
            if config.k_core_items:
                step += _delete(con, """(platform, item_id) IN (SELECT (platform, item_id) FROM stage_events
                                        GROUP BY platform, item_id HAVING count(*) < ?)""",
                                [config.k_core_items])
            removed += step
            if not step:
                break
        report.rules.append(RuleReport("k-core", removed,
                                       f"users >= {config.k_core_users}, items >= {config.k_core_items}"))

    if config.hash_user_ids:
        salt = _salt(config)
        con.execute(f"UPDATE stage_events SET user_id = {_DIGEST.format('user_id')} WHERE NOT _final", [salt])
        con.execute(f"UPDATE stage_splits SET user_id = {_DIGEST.format('user_id')}", [salt])
        # links keep no raw id either: the platform account id is hashed too (later imports match it hashed)
        con.execute(f"""UPDATE stage_links SET user_id = {_DIGEST.format('user_id')},
                        platform_user_id = {_DIGEST.format('platform_user_id')}""", [salt, salt])
        report.rules.append(RuleReport("salted user-id hashing", 0, "user ids and linked account ids replaced by "
                                                                    "sha256(salt + id)"))
    return report
