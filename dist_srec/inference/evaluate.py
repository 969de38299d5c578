"""Evaluating trained checkpoints: LLM-SRec next to its teacher (`evaluate_srec`), and the teacher alone
(`evaluate_teacher`), on the test (or valid) split under the sampled and full protocols.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dist_srec.data.catalog import Catalog
from dist_srec.data.loader import rank_loader
from dist_srec.eval.compare import compare_models
from dist_srec.eval.protocols import EvalProtocol, check_negatives, result_record, select_users, write_results
from dist_srec.eval.teacher_eval import evaluate_model
from dist_srec.inference.load import catalog_vectors, load_srec
from dist_srec.parallel.context import TrainContext
from dist_srec.storage import RunDir, join
from dist_srec.train import checkpoint as ckpt_io
from dist_srec.train.checkpoint import model_sha256
from dist_srec.train.teacher import TeacherTrainConfig, load_teacher


def evaluate_srec(
    ckpt: str | Path,
    *,
    data: str | Path | None = None,
    split: str = "test",
    num_users: int = 0,
    num_negatives: int = 99,
    seed: int = 42,
    shuffle_history: bool = False,
    exclude_history: bool = False,
    batch_size: int = 16,
    out: str | Path | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """LLM-SRec vs its teacher on `split`: sampled and full protocols, optional shuffle diagnostic."""
    model, conf, cat = load_srec(ckpt, data=data)
    protocols = [
        EvalProtocol(
            protocol="sampled", split=split, seed=seed, num_users=num_users, num_negatives=num_negatives
        ),
        EvalProtocol(
            protocol="full", split=split, seed=seed, num_users=num_users, exclude_history=exclude_history
        ),
    ]
    selected = select_users(cat.num_users, num_users, seed)
    user_items = cat.user_items()
    check_negatives(user_items, cat.num_items, num_negatives, field="num_negatives")
    width = int(max(1, (user_items[0][1:] - user_items[0][:-1]).max()))  # whole histories (exact exclusion)
    ctx = TrainContext()
    batches = lambda: rank_loader(cat.root, split, batch_size, width, ctx, shuffle=False, remainder="pad")  # noqa: E731
    sha = ckpt_io.model_sha256(ckpt)
    items, cache = catalog_vectors(model, conf, ckpt, cat, cache_dir, progress)
    teacher = model.teacher
    models = {
        "llm-srec": (model.encode_users, items, model.cfg.prompts.max_history_items),
        "sasrec": (lambda b: teacher.user_vector(b["history"]), teacher.item_embeddings().detach().float(),
                   teacher.cfg.max_len),
    }  # fmt: skip
    report = compare_models(models, batches, protocols, user_items=user_items, num_users=cat.num_users,
                            selected=selected, shuffle=shuffle_history, progress=progress)  # fmt: skip
    records = []
    for name, res in report.items():
        for key, metrics in res.items():
            if key == "shuffle_cosine":
                continue
            proto = next(p for p in protocols if p.protocol == key.split("/")[-1])
            records.append(result_record(
                metrics, proto, model=name if "/" not in key else f"{name} (shuffled history)",
                checkpoint=str(ckpt) if name == "llm-srec" else conf["teacher"]["path"],
                checkpoint_sha256=sha if name == "llm-srec" else conf["teacher"]["sha256"],
                manifest_sha256=cat.manifest_sha256, counts={"num_users": cat.num_users, "num_items": cat.num_items},
                extra={"shuffle_cosine": res.get("shuffle_cosine")} if "/" in key else None,
            ))  # fmt: skip
    doc = {"split": split, "report": report, "records": records, "llm": conf["llm"],
           "item_vectors_cache": str(cache)}  # fmt: skip
    if out is not None:
        write_results(out, doc)
    return doc


def evaluate_teacher(
    ckpt: str | Path,
    data_dir: str | Path,
    *,
    split: str = "test",
    protocols: tuple[str, ...] = ("sampled", "full"),
    exclude_history: tuple[bool, ...] = (False, True),
    exclude_last: int = 0,
    num_users: int = 0,
    num_negatives: int = 99,
    seed: int = 42,
    batch_size: int = 256,
    out: str | Path | None = None,
    ctx: TrainContext | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Evaluate a teacher checkpoint; one record per protocol (full: per exclusion flag); rank 0 writes `out`.
    `exclude_last` > 0 drops only the last k history items where the history is excluded (HSTU: 200)."""

    ctx = ctx or TrainContext()
    cat = Catalog.load(data_dir)
    model, _ = load_teacher(ckpt, catalog=cat.identity())
    model.to(ctx.device)
    user_items = cat.user_items()
    if "sampled" in protocols:
        check_negatives(user_items, cat.num_items, num_negatives, field="num_negatives")
    records = []
    for name in protocols:
        for excl in exclude_history if name == "full" else (False,):
            proto = EvalProtocol(
                protocol=name, split=split, seed=seed, num_users=num_users, exclude_history=excl,
                exclude_last=exclude_last if excl else 0, num_negatives=num_negatives,
            )  # fmt: skip
            metrics = evaluate_model(
                model, data_dir, proto, user_items=user_items, num_users=cat.num_users, batch_size=batch_size,
                ctx=ctx, progress=progress,
            )  # fmt: skip
            counts = {"num_users": cat.num_users, "num_items": cat.num_items}
            record = result_record(
                metrics, proto, model="sasrec", checkpoint=str(ckpt), checkpoint_sha256=model_sha256(ckpt),
                manifest_sha256=cat.manifest_sha256, counts=counts,
            )  # fmt: skip
            records.append(record)
    if out is not None and ctx.is_main:
        write_results(out, records)
    return records


def evaluate_teacher_run(
    data_dir: str | Path, out_dir: str | Path, cfg: TeacherTrainConfig, ctx: TrainContext | None = None
) -> list[dict[str, Any]]:
    """The closing evaluation of a `pretrain-teacher` run: OUT/best on the test split, both protocols,
    with the run's seed and validation negatives; rank 0 writes OUT/results.json (and publishes it
    when OUT is a URI; `best` is read from its published version there, on any machine)."""
    run = RunDir(out_dir)
    records = evaluate_teacher(
        join(out_dir, "best"), data_dir, out=run.local / "results.json", seed=cfg.loop.seed, ctx=ctx,
        num_negatives=cfg.eval_negatives, progress=cfg.loop.progress,
    )  # fmt: skip
    if ctx is None or ctx.is_main:
        run.publish()
    return records
