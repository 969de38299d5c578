"""LLM-SRec end to end on a tiny random LM: train, resume, checkpoint identity, evaluate, recommend, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dist_srec.cli.main import main
from dist_srec.errors import CheckpointError, ConfigError, DataError
from dist_srec.inference.evaluate import evaluate_srec
from dist_srec.inference.recommend import recommend
from dist_srec.models.lm_config import LLMConfig
from dist_srec.train.srec_train import train_srec
from tests.train.helpers import prepared_catalog, tiny_srec_config, tiny_teacher

HEADS = {"item_proj", "user_out", "item_out", "user_head", "item_head", "teacher_proj"}


def test_train_writes_heads_only_with_identity(srec_setup: tuple[Path, Path], tmp_path: Path) -> None:
    data, teacher = srec_setup
    st = train_srec(tiny_srec_config(data, teacher, tmp_path / "run", max_steps=3))
    assert st.stopped == "max_steps" and st.global_step == 3
    best = tmp_path / "run" / "best"
    keys = load_file(best / "model.safetensors").keys()
    assert {k.split(".")[0] for k in keys} == HEADS
    conf = json.loads((best / "config.json").read_text())
    assert conf["format"] == "dist-srec/llm-srec"
    assert len(conf["llm"]["content_hash"]) == 64 and len(conf["teacher"]["sha256"]) == 64
    assert (
        conf["catalog"]["num_items"]
        == json.loads((data / "manifest.json").read_text())["counts"]["num_items"]
    )
    assert "ndcg@10" in conf["validation"]


def test_resume_matches_an_uninterrupted_run(srec_setup: tuple[Path, Path], tmp_path: Path) -> None:
    data, teacher = srec_setup
    train_srec(tiny_srec_config(data, teacher, tmp_path / "a", max_steps=6))
    train_srec(tiny_srec_config(data, teacher, tmp_path / "b", max_steps=3))  # stops mid-epoch, cursor saved
    st = train_srec(tiny_srec_config(data, teacher, tmp_path / "b", max_steps=6))  # resumes from b/last
    assert st.global_step == 6
    a = load_file(tmp_path / "a" / "last" / "model.safetensors")
    b = load_file(tmp_path / "b" / "last" / "model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    sa = json.loads((tmp_path / "a" / "last" / "train_state.json").read_text())["train_state"]
    sb = json.loads((tmp_path / "b" / "last" / "train_state.json").read_text())["train_state"]
    assert sa["loader"] == sb["loader"] and sa["samples"] == sb["samples"]


def test_teacher_from_another_catalog_is_refused(srec_setup: tuple[Path, Path], tmp_path: Path) -> None:
    data, _ = srec_setup
    other = prepared_catalog(tmp_path / "other", items=30, seed=3)
    foreign = tiny_teacher(other, tmp_path / "foreign", negatives=5)
    with pytest.raises(CheckpointError, match="catalog"):
        train_srec(tiny_srec_config(data, foreign, tmp_path / "run", max_steps=1))


def test_bad_llm_path(srec_setup: tuple[Path, Path], tmp_path: Path) -> None:
    data, teacher = srec_setup
    cfg = tiny_srec_config(data, teacher, tmp_path / "run", max_steps=1)
    cfg.llm = LLMConfig(path=str(tmp_path / "no-such-model"))
    with pytest.raises(ConfigError, match="does not exist"):
        train_srec(cfg)


@pytest.fixture(scope="module")
def trained(srec_setup: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    data, teacher = srec_setup
    out = tmp_path_factory.mktemp("trained")
    train_srec(tiny_srec_config(data, teacher, out, max_steps=3))
    return out / "best"


def test_evaluate_side_by_side_with_shuffle(trained: Path, tmp_path: Path) -> None:
    doc = evaluate_srec(
        trained, shuffle_history=True, num_negatives=20, out=tmp_path / "e.json", progress=False
    )
    rep = doc["report"]
    assert set(rep) == {"llm-srec", "sasrec"}
    for res in rep.values():
        assert set(res) == {"sampled", "full", "shuffled/sampled", "shuffled/full", "shuffle_cosine"}
        assert res["sampled"]["count"] == res["full"]["count"] == 40
        assert -1.0 <= res["shuffle_cosine"] <= 1.0 + 1e-6
        for m in ("sampled", "full"):
            assert 0.0 <= res[m]["ndcg@10"] <= res[m]["hr@10"] <= 1.0
    assert len(doc["records"]) == 8 and json.loads((tmp_path / "e.json").read_text())["split"] == "test"
    cache = Path(doc["item_vectors_cache"])
    stamp = cache.stat().st_mtime_ns
    again = evaluate_srec(trained, num_negatives=20, progress=False)
    assert cache.stat().st_mtime_ns == stamp, "item vectors are re-encoded instead of read from the cache"
    assert again["report"]["llm-srec"]["sampled"] == rep["llm-srec"]["sampled"]


def test_recommend_known_user_and_titles(trained: Path) -> None:
    recs = recommend(trained, user="user3", k=5)
    assert [r.rank for r in recs] == [1, 2, 3, 4, 5]
    assert all(a.score >= b.score for a, b in zip(recs, recs[1:]))
    from dist_srec.data.catalog import Catalog
    from dist_srec.inference.recommend import user_history

    cat = Catalog.load(json.loads((trained / "config.json").read_text())["catalog"]["data"])
    seen = set(user_history(cat, "user3")[0])
    assert not seen & {r.item_id for r in recs}, "history items must be excluded"
    a, b = cat.titles[1], cat.titles[2]
    recs = recommend(trained, history=[a, b.upper()], k=3)  # titles match case-insensitively
    assert len(recs) == 3 and not {1, 2} & {r.item_id for r in recs}
    typo = a.replace("Title", "Titel")
    with pytest.raises(DataError, match=rf"unknown title '{typo}'; close matches: \['{a}'"):
        recommend(trained, history=[typo], k=3)
    with pytest.raises(DataError, match="unknown user 'usr3'; close matches"):
        recommend(trained, user="usr3")
    with pytest.raises(DataError, match="larger than the catalog"):
        recommend(trained, user="user3", k=10_000)


def test_cli_train_evaluate_recommend(
    srec_setup: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    data, teacher = srec_setup
    run = tmp_path / "run"
    rc = main(["train", "--data", str(data), "--teacher", str(teacher), "--llm.path", "tiny", "--llm.dtype", "float32",
               "--out", str(run), "--loop.max_steps", "2", "--batch_size", "4", "--eval_users", "5", "--eval_negatives", "20",
               "--loop.progress", "false"])  # fmt: skip
    assert rc == 0 and (run / "best" / "config.json").is_file()
    rc = main(["evaluate", "--ckpt", str(run / "best"), "--eval_negatives", "20", "--eval_users", "10",
               "--shuffle_history", "true", "--progress", "false"])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0 and "| llm-srec, shuffled history |" in out and "| sasrec |" in out
    assert (run / "eval-test.json").is_file()
    assert main(["recommend", "--ckpt", str(run / "best"), "--user", "user5", "--k", "3"]) == 0
    assert "top 3 for user user5" in capsys.readouterr().out
    assert main(["recommend", "--ckpt", str(run / "best"), "--history", "Nope Title", "--k", "3"]) == 2
    assert "unknown title 'Nope Title'" in capsys.readouterr().err
