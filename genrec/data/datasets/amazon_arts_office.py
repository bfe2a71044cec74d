"""The amazon-arts-office cross-platform set (Amazon 2018 "Arts, Crafts & Sewing" x "Office Products",
as prepared by URLLM; see the folder's SOURCE.txt).

- two platforms, ``amazon-arts`` (item ids 0..18638) and ``amazon-office`` (18639..38395);
- users are the Amazon reviewer ids of ``userlist.txt`` (uid -> reviewer id), linked on both platforms;
- each user has two lines sharing one history and ending in one target each; the history becomes events at
  sequence positions 0..N-1 and BOTH targets are kept at position N (their own line order breaks the tie), so
  that "strictly earlier" history of either target is exactly the shared history, as in the published protocol;
- the published user split (train / valid / test files) is kept.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd

from genrec.data.importers import FILE, ImportBatch, Mapping, items_from_table
from genrec.data.readers import LINE, read_table
from genrec.data.schema import Platform
from genrec.errors import DataError

ARTS = Platform("amazon-arts", verb="bought", time_kind="sequence",
                description='Amazon "Arts, Crafts & Sewing" purchases (reviews)')
OFFICE = Platform("amazon-office", verb="bought", time_kind="sequence",
                  description='Amazon "Office Products" purchases (reviews)')
FIRST_OFFICE_ID = 18639
SPLIT_FILES = {"train": "train_F2.txt", "valid": "valid_F2.txt", "test": "test_F2.txt"}
FILES = ("item_listA_F.csv", "item_listO_AA_F.csv", "userlist.txt", *SPLIT_FILES.values())


def platform_of(item_id: int) -> str:
    return ARTS.name if item_id < FIRST_OFFICE_ID else OFFICE.name


def load(path: Path, *, skip_bad_rows: bool = False) -> ImportBatch:
    missing = [f for f in FILES if not (path / f).is_file()]
    if missing:
        raise DataError(f"missing file(s): {', '.join(missing)}", file=path, expected=", ".join(FILES))
    items = pd.concat([_items(path / "item_listA_F.csv", ARTS, skip_bad_rows),
                       _items(path / "item_listO_AA_F.csv", OFFICE, skip_bad_rows)], ignore_index=True)
    reviewer = _userlist(path / "userlist.txt")
    events, splits = [], []
    for split, name in SPLIT_FILES.items():
        file_events, users = _sequences(path / name, reviewer)
        events.append(file_events)
        splits.extend((u, split) for u in users)
    events_frame = pd.concat(events, ignore_index=True)
    users = sorted(set(reviewer.values()))
    links = pd.DataFrame([(p.name, u, u) for p in (ARTS, OFFICE) for u in users],
                         columns=["platform", "platform_user_id", "user_id"])
    return ImportBatch(source=f"amazon-arts-office:{path}", platforms=[ARTS, OFFICE], events=events_frame,
                       items=items, links=links, splits=pd.DataFrame(splits, columns=["user_id", "split"]))


def _items(path: Path, platform: Platform, skip_bad_rows: bool) -> pd.DataFrame:
    table = read_table(path, "csv", skip_bad_rows=skip_bad_rows)
    mapping = Mapping(columns={"item_id": "idAfter", "title": "item_title", "attributes": "item_attribute"},
                      constants={"platform": platform.name})
    frame, _ = items_from_table(table, mapping, skip_bad_rows=skip_bad_rows)
    ids = pd.to_numeric(frame["item_id"], errors="coerce")
    wrong = ids.isna() | (ids.map(lambda i: platform_of(int(i)) if pd.notna(i) else None) != platform.name)
    if wrong.any():
        row = frame[wrong].iloc[0]
        raise DataError(f"item id {row['item_id']!r} is outside {platform.name}'s id range", file=path,
                        line=int(row[LINE]), field="idAfter",
                        expected="0..18638 for Arts, 18639..38395 for Office")
    return frame


def _userlist(path: Path) -> dict[int, str]:
    reviewer: dict[int, str] = {}
    with path.open(encoding="utf-8") as fh:
        for number, row in enumerate(csv.reader(fh, delimiter="\t"), start=1):
            if len(row) != 2 or not row[1].strip().isdigit():
                raise DataError(f"bad row {row!r}", file=path, line=number,
                                expected="<reviewer id> TAB <uid>")
            reviewer[int(row[1])] = row[0].strip()
    return reviewer


def _sequences(path: Path, reviewer: dict[int, str]) -> tuple[pd.DataFrame, list[str]]:
    """Events of one split file: shared history at positions 0..N-1, both line targets at N."""
    rows: list[tuple[str, str, str, int, int]] = []
    users: list[str] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    if len(lines) % 2:
        raise DataError("odd number of lines", file=path, line=len(lines),
                        expected="two lines per user (one per target)")
    for first in range(0, len(lines), 2):
        pair = [_parse_line(path, first + k + 1, lines[first + k]) for k in (0, 1)]
        (uid, n, tokens_a), (uid_b, n_b, tokens_b) = pair
        if uid != uid_b or n != n_b:
            raise DataError(f"line pair for uid {uid} and {uid_b} do not match", file=path, line=first + 2,
                            expected="the same uid and target position on both lines of a user")
        if uid not in reviewer:
            raise DataError(f"uid {uid} is not in userlist.txt", file=path, line=first + 1, field="uid")
        user = reviewer[uid]
        users.append(user)
        history_a = [t for t in tokens_a if t[1] != n]
        if history_a != [t for t in tokens_b if t[1] != n]:
            raise DataError(f"the two lines of uid {uid} have different histories", file=path, line=first + 2,
                            expected="a shared history before the targets")
        for item, pos in history_a:
            rows.append((user, platform_of(item), str(item), pos, first + 1))
        for k, tokens in enumerate((tokens_a, tokens_b)):
            targets = [t for t in tokens if t[1] == n]
            if len(targets) != 1:
                raise DataError(f"{len(targets)} tokens at target position {n}", file=path, line=first + k + 1,
                                expected="exactly one target token")
            item, pos = targets[0]
            rows.append((user, platform_of(item), str(item), pos, first + k + 1))
    frame = pd.DataFrame(rows, columns=["user_id", "platform", "item_id", "position", LINE])
    frame["timestamp"] = pd.to_datetime(frame["position"], unit="s").astype("datetime64[us]")
    frame["event"] = "review"
    frame["value"] = float("nan")
    frame[FILE] = str(path)
    return frame[["user_id", "platform", "item_id", "timestamp", "event", "value", FILE, LINE]], users


def _parse_line(path: Path, number: int, line: str) -> tuple[int, int, list[tuple[int, int]]]:
    fields = [f for f in line.rstrip("\n").split("\t") if f]
    try:
        uid, n = int(fields[0]), int(fields[1])
        tokens = []
        for token in fields[2:]:
            item, pos, _ = token.split("|")
            tokens.append((int(item), int(pos)))
    except (ValueError, IndexError) as exc:
        raise DataError(f"cannot parse ({exc})", file=path, line=number,
                        expected="uid TAB N TAB item|pos|pos ...") from exc
    return uid, n, tokens
