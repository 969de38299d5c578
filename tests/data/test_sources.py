"""Every bad-input class gets a clear error naming the file, row and field; Amazon 2023 format."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from dist_srec.cli.main import main
from dist_srec.config import PrepareConfig
from dist_srec.data.catalog import Catalog
from dist_srec.data.prepare import prepare
from dist_srec.errors import ConfigError, DataError
from tests.data.synth import write_amazon, write_custom


def _cfg(inter: Path, items: Path, out: Path, **kw) -> PrepareConfig:
    return PrepareConfig(
        dataset="custom", out=str(out), interactions=str(inter), items=str(items), progress=False, **kw
    )


def test_missing_column(tmp_path: Path) -> None:
    inter, items = write_custom(tmp_path)
    inter.write_text("user_id,item_id,time\nu,i,1\n")
    with pytest.raises(DataError, match=r"missing column.*timestamp.*interactions\.csv"):
        prepare(_cfg(inter, items, tmp_path / "o"))


def test_non_numeric_timestamp_names_row(tmp_path: Path) -> None:
    inter, items = write_custom(tmp_path)
    lines = inter.read_text().splitlines()
    lines[3] = "user0,item1,yesterday"
    inter.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"non-numeric timestamp 'yesterday'.*row 4, field 'timestamp'"):
        prepare(_cfg(inter, items, tmp_path / "o"))


def test_missing_value_names_row(tmp_path: Path) -> None:
    inter, items = write_custom(tmp_path)
    lines = inter.read_text().splitlines()
    lines[5] = ",item1,1600000000"
    inter.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"missing value.*row 6, field 'user_id'"):
        prepare(_cfg(inter, items, tmp_path / "o"))


def test_missing_title_placeholder_or_strict(tmp_path: Path) -> None:
    inter, items = write_custom(tmp_path, items=10, per_user=(5, 9))
    lines = items.read_text().splitlines()
    lines[3] = "item2,,"  # item2 has no title
    items.write_text("\n".join(lines) + "\n")
    m = prepare(_cfg(inter, items, tmp_path / "o", kcore=0))
    assert m["stats"]["placeholder_titles"] == 1 and m["stats"]["untitled_in_items_file"] == 1
    assert "Item item2" in Catalog.load(tmp_path / "o").titles
    with pytest.raises(DataError, match=r"no title.*items\.csv.*row 3, field 'title'"):
        prepare(_cfg(inter, items, tmp_path / "o2", kcore=0, strict=True))


def test_duplicates_dropped_and_counted_or_strict(tmp_path: Path) -> None:
    inter, items = write_custom(tmp_path)
    lines = inter.read_text().splitlines()
    inter.write_text("\n".join([*lines, lines[1], lines[2]]) + "\n")
    m = prepare(_cfg(inter, items, tmp_path / "o", kcore=0))
    assert m["stats"]["duplicates_dropped"] == 2
    assert m["counts"]["num_interactions"] == len(lines) - 1
    with pytest.raises(DataError, match=rf"duplicate interaction.*row {len(lines) + 1}"):
        prepare(_cfg(inter, items, tmp_path / "o2", kcore=0, strict=True))


def test_users_empty_after_filtering(tmp_path: Path) -> None:
    inter, items = write_custom(tmp_path, per_user=(3, 5))
    with pytest.raises(DataError, match=r"no users left after filtering \(kcore=50"):
        prepare(_cfg(inter, items, tmp_path / "o", kcore=50))


def test_empty_input(tmp_path: Path) -> None:
    inter, items = write_custom(tmp_path)
    inter.write_text("user_id,item_id,timestamp\n")
    with pytest.raises(DataError, match=r"no interactions.*interactions\.csv"):
        prepare(_cfg(inter, items, tmp_path / "o"))


def test_missing_file_and_bad_config(tmp_path: Path) -> None:
    inter, items = write_custom(tmp_path)
    with pytest.raises(DataError, match="not found"):
        prepare(_cfg(tmp_path / "nope.csv", items, tmp_path / "o"))
    with pytest.raises(ConfigError, match="kcore"):
        _cfg(inter, items, tmp_path / "o", kcore=-1)
    with pytest.raises(ConfigError, match="interactions"):
        PrepareConfig(dataset="custom", out="x")


def test_never_overwrites_foreign_directory(tmp_path: Path) -> None:
    inter, items = write_custom(tmp_path)
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "precious.txt").write_text("keep me")
    with pytest.raises(DataError, match="not empty"):
        prepare(_cfg(inter, items, tmp_path / "o"))
    assert (tmp_path / "o" / "precious.txt").read_text() == "keep me"


def test_parquet_custom_input(tmp_path: Path) -> None:
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    inter, items = write_custom(tmp_path)
    pq.write_table(pacsv.read_csv(inter), tmp_path / "i.parquet")
    pq.write_table(pacsv.read_csv(items), tmp_path / "m.parquet")
    a = prepare(_cfg(inter, items, tmp_path / "a"))
    b = prepare(_cfg(tmp_path / "i.parquet", tmp_path / "m.parquet", tmp_path / "b"))
    assert a["counts"] == b["counts"]
    assert [s["sha256"] for s in a["shards"]["test"]] == [s["sha256"] for s in b["shards"]["test"]]


def _amazon_rows() -> tuple[list, dict]:
    rows = []
    for u in range(6):
        for k, asin in enumerate(["B01", "B02", "B03", "B04", "B05", "B06"][u % 2 :]):
            rows.append((f"AU{u}", asin, 1_600_000_000_000 + 86_400_000 * (k + u)))
    return rows, {f"B0{i}": f"Movie {i}" for i in range(1, 7)}


def test_amazon2023_sample(tmp_path: Path) -> None:
    rows, titles = _amazon_rows()
    reviews, meta = write_amazon(tmp_path, rows, titles)
    out = tmp_path / "o"
    assert (
        main(
            [
                "prepare",
                "--dataset",
                "amazon2023",
                "--interactions",
                str(reviews),
                "--items",
                str(meta),
                "--out",
                str(out),
                "--progress",
                "false",
            ]
        )
        == 0
    )
    cat = Catalog.load(out)
    # 5-core drops B01 (3 reviews): 30 of 33 interactions remain
    assert cat.num_users == 6 and cat.manifest["counts"]["num_interactions"] == len(rows) - 3
    assert cat.num_items == 5
    assert cat.titles[1] == "Movie 2"
    assert cat.items["description"][0].as_py() == "Movie 2 is great"
    ts = cat.interactions(["timestamp"])["timestamp"].to_pylist()
    assert min(ts) == 1_600_000_000 + 86_400  # milliseconds -> seconds (B02 at k=1 for AU0)


def test_amazon2023_bad_lines(tmp_path: Path) -> None:
    rows, titles = _amazon_rows()
    reviews, meta = write_amazon(tmp_path, rows, titles)
    with gzip.open(reviews, "at") as f:
        f.write('{"user_id": "AU9", "parent_asin": "B01"}\n')
    cfg = PrepareConfig(
        dataset="amazon2023",
        out=str(tmp_path / "o"),
        interactions=str(reviews),
        items=str(meta),
        progress=False,
    )
    with pytest.raises(
        DataError, match=rf"missing field.*reviews\.jsonl\.gz.*row {len(rows) + 1}, field 'timestamp'"
    ):
        prepare(cfg)
    with gzip.open(reviews, "wt") as f:
        f.write('{"user_id": "AU9", "parent_asin": "B01", "timestamp": "noon"}\n')
    with pytest.raises(DataError, match=r"non-numeric timestamp 'noon'.*row 1"):
        prepare(cfg)
    with gzip.open(reviews, "wt") as f:
        f.write("{not json\n")
    with pytest.raises(DataError, match=r"malformed JSON.*row 1"):
        prepare(cfg)


def test_cli_reports_errors_cleanly(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    inter, items = write_custom(tmp_path)
    inter.write_text("user_id,item_id,timestamp\n")
    rc = main(
        [
            "prepare",
            "--dataset",
            "custom",
            "--interactions",
            str(inter),
            "--items",
            str(items),
            "--out",
            str(tmp_path / "o"),
            "--progress",
            "false",
        ]
    )
    assert rc == 2
    assert "error: input has no interactions" in capsys.readouterr().err


@pytest.mark.real_assets
def test_embedded_movielens_counts(tmp_path: Path) -> None:
    m = prepare(PrepareConfig(dataset="ml-1m", out=str(tmp_path / "ml1m"), progress=False))
    # 5-core ML-1M: 6040 users, 3416 items, 999,611 interactions (as SASRec.pytorch's ml-1m.txt)
    assert (m["counts"]["num_users"], m["counts"]["num_items"], m["counts"]["num_interactions"]) == (
        6040,
        3416,
        999611,
    )
    assert m["samples"]["test"]["total"] == 6040
    m = prepare(PrepareConfig(dataset="ml-100k", out=str(tmp_path / "ml100k"), progress=False))
    assert m["counts"]["num_users"] == 943
    assert Catalog.load(tmp_path / "ml100k").titles[1] == "Toy Story (1995)"
