"""URIs through `dist_srec.storage` (pyarrow.fs; fsspec schemes wrapped): staged checkpoints, streamed
data, and run outputs mirrored to object storage, in-memory (`memory://`, an fsspec scheme) and local
(`file://`, a pyarrow scheme): the calls an `s3://` URI takes too."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import fsspec
import pytest
import torch
from safetensors.torch import load_file

from dist_srec import storage
from dist_srec.data.catalog import Catalog
from dist_srec.data.loader import ShardLoader
from dist_srec.errors import CheckpointError, DataError
from dist_srec.inference.evaluate import evaluate_srec
from dist_srec.storage import REF_SUFFIX, RunDir, is_uri, join, local_checkpoint
from dist_srec.train.srec_train import train_srec
from tests.train.helpers import tiny_srec_config


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIST_SREC_CACHE", str(tmp_path / "cache"))


def _upload(local: Path, uri: str) -> str:
    """Copy a local directory to `uri` through the module's own writes; returns the URI."""
    for f in sorted(p for p in local.rglob("*") if p.is_file()):
        storage.write_bytes(join(uri, f.relative_to(local).as_posix()), f.read_bytes())
    return uri


def _memory_uri() -> str:
    return f"memory://dsr-{uuid.uuid4().hex[:8]}"


def test_uri_detection_and_join() -> None:
    assert is_uri("s3://b/k") and is_uri("file:///tmp/x") and is_uri("memory://x")
    assert not is_uri("/tmp/x") and not is_uri("runs/a") and not is_uri("C:dir")
    assert join("s3://b/run/", "last", "config.json") == "s3://b/run/last/config.json"
    assert join("runs/a", "best") == str(Path("runs/a/best"))


def test_published_checkpoint_versions_and_pointer(tmp_path: Path) -> None:
    """publish: a new version + a pointer, the old version deleted, unchanged files not re-sent; pull
    on a fresh mirror (another machine) restores it; a tampered file is refused by its sha256."""
    uri = _memory_uri()
    run = RunDir(uri)
    assert run.local != Path(uri) and run.local.is_relative_to(tmp_path / "cache")
    (run.local / "last").mkdir(parents=True)
    (run.local / "last" / "model.bin").write_bytes(b"v1")
    (run.local / "metrics.jsonl").write_text('{"step": 1}\n')
    (run.local / "cache").mkdir()
    (run.local / "cache" / "big.npy").write_bytes(b"x" * 100)
    run.publish()
    fs = fsspec.filesystem("memory")
    ref1 = json.loads(fs.cat(f"{uri}/last{REF_SUFFIX}"))
    assert fs.cat(f"{uri}/{ref1['dir']}/model.bin") == b"v1" and not fs.exists(f"{uri}/cache")
    run.publish()  # nothing changed: the same version stays
    assert json.loads(fs.cat(f"{uri}/last{REF_SUFFIX}"))["dir"] == ref1["dir"]
    (run.local / "last" / "model.bin").write_bytes(b"v2!")
    run.publish()
    ref2 = json.loads(fs.cat(f"{uri}/last{REF_SUFFIX}"))
    assert ref2["dir"] != ref1["dir"] and not fs.exists(f"{uri}/{ref1['dir']}")

    shutil.rmtree(run.local)  # another machine: an empty mirror
    RunDir(uri).pull()
    assert (run.local / "last" / "model.bin").read_bytes() == b"v2!"
    assert (run.local / "metrics.jsonl").read_text() == '{"step": 1}\n' and not (run.local / "cache").exists()

    fs.pipe(f"{uri}/{ref2['dir']}/model.bin", b"bad")
    shutil.rmtree(tmp_path / "cache" / "staged")
    with pytest.raises(CheckpointError, match="does not match the sha256"):
        local_checkpoint(join(uri, "last"))
    with pytest.raises(CheckpointError, match="has no files"):
        local_checkpoint(join(uri, "nothing-here"))


def test_uri_data_and_teacher_train_and_resume(srec_setup: tuple[Path, Path], tmp_path: Path) -> None:
    """A `file://` dataset, teacher and OUT: training streams the shards, publishes its checkpoints,
    and a run on a fresh machine (an empty cache) resumes from them to the same weights."""
    data, teacher = srec_setup
    remote = tmp_path / "bucket"
    data_uri, teacher_uri = (
        _upload(data, f"file://{remote}/data"),
        _upload(teacher, f"file://{remote}/teacher"),
    )
    out_uri = f"file://{remote}/runs/srec"
    train_srec(tiny_srec_config(data, teacher, tmp_path / "plain", max_steps=4))
    train_srec(tiny_srec_config(data_uri, teacher_uri, out_uri, max_steps=2))
    pointer = json.loads((remote / "runs" / "srec" / f"last{REF_SUFFIX}").read_text())
    assert (remote / "runs" / "srec" / pointer["dir"] / "model.safetensors").is_file()
    assert (remote / "runs" / "srec" / "metrics.jsonl").is_file() and (
        remote / "runs/srec/config.yaml"
    ).is_file()
    assert not (remote / "runs" / "srec" / "cache").exists()
    conf = json.loads((remote / "runs" / "srec" / pointer["dir"] / "config.json").read_text())
    assert conf["catalog"]["data"] == data_uri and conf["teacher"]["path"] == teacher_uri

    shutil.rmtree(tmp_path / "cache")  # a fresh machine: nothing staged, no mirror
    st = train_srec(tiny_srec_config(data_uri, teacher_uri, out_uri, max_steps=4))
    assert st.global_step == 4
    pointer = json.loads((remote / "runs" / "srec" / f"last{REF_SUFFIX}").read_text())
    a = load_file(tmp_path / "plain" / "last" / "model.safetensors")
    b = load_file(remote / "runs" / "srec" / pointer["dir"] / "model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    doc = evaluate_srec(join(out_uri, "best"), num_users=8, num_negatives=10, progress=False)
    assert {r["model"] for r in doc["records"]} >= {"llm-srec", "sasrec"}
    assert Path(doc["item_vectors_cache"]).is_relative_to(tmp_path / "cache")  # beside the run's mirror


def test_streamed_shard_is_checked_before_use(srec_setup: tuple[Path, Path], tmp_path: Path) -> None:
    data, _ = srec_setup
    uri = _upload(data, _memory_uri())
    loader = ShardLoader.for_checks(uri, "train")
    assert loader.remote == uri and Catalog.load(uri).identity()["data"] == uri
    loader.verify()  # presence only
    n = sum(1 for _ in loader.samples_in_range(0, 0, loader.total))
    assert n == loader.total
    entry = loader.shards[0]
    fsspec.filesystem("memory").pipe(join(uri, entry["file"]), b"not a tar")
    with pytest.raises(DataError, match=r"sha256 does not match.*memory://"):
        next(iter(ShardLoader.for_checks(uri, "train").samples_in_range(0, 0, loader.total)))
    fsspec.filesystem("memory").rm(join(uri, entry["file"]))
    with pytest.raises(DataError, match="shard is missing"):
        ShardLoader.for_checks(uri, "train").verify()
    with pytest.raises(DataError, match="not a prepared data directory"):
        Catalog.load(_memory_uri())


def _last(root: Path, step: int) -> None:
    shutil.rmtree(root / "last", ignore_errors=True)
    (root / "last").mkdir(parents=True)
    (root / "last" / "train_state.json").write_text(json.dumps({"train_state": {"global_step": step}}))


def test_pull_keeps_the_newer_checkpoint() -> None:
    """After a restart the mirror may hold another `last` than the one published (Ray Train restores
    its own latest checkpoint first): pull keeps whichever is further, by step."""
    uri = _memory_uri()
    run = RunDir(uri)
    _last(run.local, 5)
    run.publish()
    assert json.loads(fsspec.filesystem("memory").cat(f"{uri}/last{REF_SUFFIX}"))["step"] == 5
    _last(run.local, 3)  # an older checkpoint restored over the mirror
    run.pull()
    assert storage.checkpoint_step(run.local / "last") == 5
    _last(run.local, 7)  # a newer one (saved, not yet published)
    run.pull()
    assert storage.checkpoint_step(run.local / "last") == 7


def test_plain_checkpoint_rewritten_in_place_is_staged_again(tmp_path: Path) -> None:
    """A checkpoint directory uploaded by hand (no pointer) and rewritten with same-size files (new
    weights of the same shapes) must not be served from the old stage."""
    src = tmp_path / "bucket" / "teacher"
    src.mkdir(parents=True)
    (src / "model.safetensors").write_bytes(b"A" * 64)
    uri = f"file://{src}"
    assert (local_checkpoint(uri) / "model.safetensors").read_bytes() == b"A" * 64
    (src / "model.safetensors").write_bytes(b"B" * 64)
    os.utime(src / "model.safetensors", ns=(1, 2_000_000_000_000_000_000))  # a later mtime, same size
    assert (local_checkpoint(uri) / "model.safetensors").read_bytes() == b"B" * 64
