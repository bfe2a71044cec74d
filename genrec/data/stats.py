"""Statistics of the store: per platform and across platforms."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from genrec.data.dbutil import first_row
from genrec.data.store import Store


@dataclass
class PlatformStats:
    platform: str
    users: int
    items_in_catalog: int
    items_with_events: int
    events: int
    sparsity: float  # 1 - events / (users * catalog items)
    history_min: int
    history_median: float
    history_mean: float
    history_p90: float
    history_max: int


@dataclass
class StoreStats:
    users: int
    events: int
    platforms: list[PlatformStats]
    overlap: dict[str, dict[str, int]]  # platform -> platform -> users on both
    users_on_all_platforms: int

    def to_dict(self) -> dict:
        return asdict(self)


def compute(store: Store, platforms: list[str] | None = None) -> StoreStats:
    names = platforms or [p.name for p in store.platforms()]
    con = store.con
    rows = con.execute(
        """WITH per_user AS (
               SELECT platform, user_id, count(*) AS n FROM events
               WHERE list_contains(?, platform) GROUP BY platform, user_id),
           per_platform AS (
               SELECT platform, count(*) AS users, sum(n) AS events, min(n) AS lo, median(n) AS med,
                      avg(n) AS mean, quantile_cont(n, 0.9) AS p90, max(n) AS hi
               FROM per_user GROUP BY platform),
           active AS (SELECT platform, count(DISTINCT item_id) AS active FROM events
                      WHERE list_contains(?, platform) GROUP BY platform),
           catalog AS (SELECT platform, count(*) AS items FROM items GROUP BY platform)
           SELECT p.platform, p.users, coalesce(c.items, 0), a.active, p.events, p.lo, p.med, p.mean, p.p90, p.hi
           FROM per_platform p JOIN active a USING (platform) LEFT JOIN catalog c USING (platform)
           ORDER BY p.platform""", [names, names]).fetchall()
    stats = []
    for platform, users, catalog, active, events, lo, med, mean, p90, hi in rows:
        space = users * max(catalog, active)
        stats.append(PlatformStats(platform, users, catalog, active, int(events),
                                   1.0 - events / space if space else 0.0, lo, float(med), float(mean),
                                   float(p90), hi))
    matrix = store.user_overlap()
    overlap = {a: {b: int(matrix.loc[a, b]) for b in names if b in matrix.columns}
               for a in names if a in matrix.index}
    users, events, on_all = first_row(con.execute(
        """WITH up AS (SELECT user_id, count(DISTINCT platform) AS k, count(*) AS n FROM events
                       WHERE list_contains(?, platform) GROUP BY user_id)
           SELECT count(*), coalesce(sum(n), 0), count(*) FILTER (WHERE k = ?) FROM up""",
        [names, len(names)]))
    return StoreStats(users, int(events), stats, overlap, on_all)
