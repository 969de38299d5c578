"""Cluster job submission: the example cluster specs parse and use documented fields; `dist-srec submit`
ships the project to a loopback-only local head whose Python lacks it, and the README's cluster path
(train on URIs, stop, resubmit and resume, batch recommendations) runs there."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import venv
import zipfile
from pathlib import Path

import pytest
import yaml

from dist_srec.cluster.submit import SubmitConfig, job_entrypoint, runtime_env, submit, unpack_wheel
from dist_srec.errors import ConfigError
from tests.spawned import free_port

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "launch" / "cluster"


def test_ray_cluster_launcher_yaml_matches_rays_schema() -> None:
    import jsonschema
    import ray.autoscaler

    doc = yaml.safe_load((CLUSTER / "ray-cluster.yaml").read_text())
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(doc, schema)  # the schema `ray up` validates against
    assert doc["head_node_type"] in doc["available_node_types"]
    assert any("launch" not in c and "requirements/stack.txt" in c for c in doc["setup_commands"])


# Fields of KubeRay's ray.io/v1 API reference (RayJobSpec, RayClusterSpec, Head/WorkerGroupSpec).
RAYJOB_SPEC = {"entrypoint", "shutdownAfterJobFinishes", "ttlSecondsAfterFinished", "activeDeadlineSeconds",
               "runtimeEnvYAML", "rayClusterSpec", "clusterSelector", "submissionMode", "suspend",
               "entrypointNumCpus", "entrypointNumGpus", "entrypointResources", "backoffLimit", "metadata",
               "jobId", "submitterPodTemplate", "submitterConfig", "deletionPolicy"}  # fmt: skip
CLUSTER_SPEC = {"rayVersion", "headGroupSpec", "workerGroupSpecs", "enableInTreeAutoscaling",
                "autoscalerOptions", "headServiceAnnotations", "suspend", "managedBy", "gcsFaultToleranceOptions"}  # fmt: skip
WORKER_GROUP = {"groupName", "replicas", "minReplicas", "maxReplicas", "rayStartParams", "template",
                "numOfHosts", "idleTimeoutSeconds", "scaleStrategy", "suspend"}  # fmt: skip


def test_kuberay_rayjob_yaml_uses_documented_fields() -> None:
    doc = yaml.safe_load((CLUSTER / "rayjob.yaml").read_text())
    assert (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", "RayJob") and doc["metadata"]["name"]
    spec = doc["spec"]
    assert set(spec) <= RAYJOB_SPEC and spec["entrypoint"].startswith("python -m dist_srec launch train")
    assert yaml.safe_load(spec["runtimeEnvYAML"])["env_vars"]["HF_HUB_OFFLINE"] == "1"
    images = {c["image"] for g in [spec["rayClusterSpec"]["headGroupSpec"], *spec["rayClusterSpec"]["workerGroupSpecs"]]
              for c in g["template"]["spec"]["containers"]}  # fmt: skip
    assert len(images) == 1 and "launch/cluster/Dockerfile" in (CLUSTER / "rayjob.yaml").read_text()
    rc = spec["rayClusterSpec"]
    assert set(rc) <= CLUSTER_SPEC and set(rc["headGroupSpec"]) <= {"rayStartParams", "template", "serviceType",
                                                                    "headService", "enableIngress"}  # fmt: skip
    for g in rc["workerGroupSpecs"]:
        assert set(g) <= WORKER_GROUP
        limits = g["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert int(limits["nvidia.com/gpu"]) * g["replicas"] >= 1
    assert "--ray.use_gpu true" in spec["entrypoint"] and "--deepspeed.stage 3" in spec["entrypoint"]


def test_dockerfile_installs_the_stack_and_the_project() -> None:
    """The image rayjob.yaml names: every COPY source exists in the repository, the pinned stack is
    installed before the project, and the project is installed without pulling other dependencies."""
    lines = [
        ln.strip() for ln in (CLUSTER / "Dockerfile").read_text().splitlines() if ln.strip() and ln[0] != "#"
    ]
    assert lines[0].startswith("FROM rayproject/ray:") and "2.60.0" in lines[0]
    copies = [ln.split()[2:-1] for ln in lines if ln.startswith("COPY")]
    assert copies and all((REPO / src.rstrip("/")).exists() for srcs in copies for src in srcs)
    run = " ".join(ln for ln in lines if ln.startswith("RUN") or ln.startswith("&&"))
    assert (
        run.index("requirements/stack.txt") < run.index("--no-deps .") and "import dist_srec.kernels" in run
    )


def test_submit_config_validates_and_builds_runtime_env(tmp_path: Path) -> None:
    req, extra = tmp_path / "req.txt", tmp_path / "env.yaml"
    req.write_text("webdataset==1.0.2\n")
    extra.write_text("env_vars: {A: '0', B: '2'}\npy_modules: [/x/mine]\nconda: null\n")
    cfg = SubmitConfig(working_dir=str(REPO), pip=str(req), env_vars={"A": "1"}, runtime_env=str(extra))
    env = runtime_env(cfg, ["/s/dist_srec", "/s/dist_srec-0.1.0.dist-info"])
    assert env["py_modules"] == ["/x/mine", "/s/dist_srec", "/s/dist_srec-0.1.0.dist-info"]
    assert (
        env["working_dir"] == str(REPO) and env["pip"] == str(req) and env["env_vars"] == {"A": "1", "B": "2"}
    )
    assert ".venv/" in env["excludes"] and "runs/" in env["excludes"] and "conda" in env
    assert runtime_env(SubmitConfig(), ["/m"]) == {
        "py_modules": ["/m"]
    }  # no working dir: nothing else uploaded
    assert (
        job_entrypoint(["dist-srec", "train", "--data", "s3://b/d x"])
        == "python -m dist_srec train --data 's3://b/d x'"
    )
    assert job_entrypoint(["python", "x.py"]) == "python x.py"
    with pytest.raises(ConfigError, match="no entrypoint"):
        job_entrypoint([])
    with pytest.raises(ConfigError, match="does not exist"):
        SubmitConfig(pip=str(tmp_path / "missing.txt"))
    with pytest.raises(ConfigError, match=r"not a \.whl"):
        SubmitConfig(wheel=str(req))
    with pytest.raises(ConfigError, match="cannot reach a Ray job server"):
        submit(SubmitConfig(address=f"http://127.0.0.1:{free_port()}"), ["dist-srec", "--version"], tmp_path)
    bogus = tmp_path / "other-1.0-py3-none-any.whl"
    with zipfile.ZipFile(bogus, "w") as z:
        z.writestr("other/__init__.py", "")
    with pytest.raises(ConfigError, match="not a dist-srec wheel"):
        unpack_wheel(bogus, tmp_path / "unpacked")


def _bare_python(root: Path) -> Path:
    """A venv whose site-packages reaches this one's third-party packages through a .pth line, but not
    its editable install of dist-srec (a .pth file's finder runs only in a real site dir): the Python
    of a cluster that has the stack and not this project."""
    venv.EnvBuilder(with_pip=False).create(root)
    (site,) = (root / "lib").glob("python3*/site-packages")
    ours = next(p for p in map(Path, sys.path) if p.name == "site-packages" and (p / "ray").is_dir())
    (site / "stack.pth").write_text(f"{ours}\n")
    return root / "bin" / "python"


def _pointer_step(run: Path) -> int:
    ref = run / "last.ref.json"
    if not ref.is_file():
        return 0
    state = json.loads((run / json.loads(ref.read_text())["dir"] / "train_state.json").read_text())
    return int(state["train_state"]["global_step"])


@pytest.mark.distributed
def test_cluster_path_end_to_end(srec_setup, tmp_path: Path) -> None:
    """The README's cluster section against a head whose Python cannot import dist-srec: `dist-srec
    submit` ships a wheel; a Ray Train job on `file://` data, teacher and OUT trains and publishes
    checkpoints; it is stopped, resubmitted and resumes; a batch job writes recommendations."""
    data, teacher = srec_setup
    bare = _bare_python(tmp_path / "bare")
    probe = subprocess.run([str(bare), "-c", "import ray, torch, deepspeed; import dist_srec"], cwd=tmp_path,
                           capture_output=True, text=True)  # fmt: skip
    assert probe.returncode != 0 and "No module named 'dist_srec'" in probe.stderr, probe.stderr[-500:]

    bucket = tmp_path / "bucket"
    shutil.copytree(data, bucket / "data")
    shutil.copytree(teacher, bucket / "teacher")
    out_uri, run = f"file://{bucket}/runs/srec", bucket / "runs" / "srec"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PATH": f"{bare.parent}:{os.environ['PATH']}",
           "DIST_SREC_CACHE": str(tmp_path / "node-cache")}  # fmt: skip
    gcs, dash = free_port(), free_port()
    temp = Path("/tmp") / f"ray-dsj-{os.getpid()}"  # short: unix socket paths have a length limit
    head = subprocess.Popen(
        [str(bare), "-m", "ray.scripts.scripts", "start", "--head", "--block", "--node-ip-address=127.0.0.1",
         f"--port={gcs}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--num-cpus=2",
         "--object-store-memory=200000000", f"--temp-dir={temp}", "--include-dashboard=true", "--disable-usage-stats"],
        env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        from ray.job_submission import JobStatus, JobSubmissionClient

        address = f"http://127.0.0.1:{dash}"
        for _ in range(120):  # the job server comes up a few seconds after the head
            try:
                client = JobSubmissionClient(address)
                client.list_jobs()
                break
            except Exception:
                time.sleep(1)
        submit = [sys.executable, "-m", "dist_srec", "submit", "--address", address]
        train = ["--", "dist-srec", "launch", "train", "--data", f"file://{bucket}/data",
                 "--teacher", f"file://{bucket}/teacher", "--out", out_uri, "--llm.path", "tiny",
                 "--llm.dtype", "float32", "--model.head_hidden", "32", "--batch_size", "4", "--eval_users", "10",
                 "--eval_negatives", "20", "--loop.max_steps", "40", "--loop.eval_every_steps", "20",
                 "--loop.save_every_steps", "2", "--loop.progress", "false", "--ray.num_workers", "1",
                 "--ray.address", "auto", "--ray.name", "srec-e2e"]  # fmt: skip
        first = subprocess.run([*submit, *train], env=env, capture_output=True, text=True, timeout=300)
        assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
        job = first.stdout.split("submitted job ", 1)[1].split()[0]
        assert f"ray job stop --address {address} {job}" in first.stdout
        for _ in range(300):  # stop it once a checkpoint past the first steps is published
            if _pointer_step(run) >= 4 or client.get_job_status(job) in (
                JobStatus.FAILED,
                JobStatus.SUCCEEDED,
            ):
                break
            time.sleep(0.5)
        assert _pointer_step(run) >= 4, client.get_job_logs(job)[-3000:]
        client.stop_job(job)
        for _ in range(120):
            if client.get_job_status(job) == JobStatus.STOPPED:
                break
            time.sleep(0.5)
        stopped_at = _pointer_step(run)
        assert client.get_job_status(job) == JobStatus.STOPPED and stopped_at < 40

        again = subprocess.run([*submit, "--follow", "true", *train], env=env, capture_output=True, text=True,
                               timeout=600)  # fmt: skip
        log = again.stdout
        assert again.returncode == 0 and "SUCCEEDED" in log, log[-3000:] + again.stderr[-2000:]
        assert "No module named" not in log and f"resumed from {out_uri}/last at step" in log
        resumed_at = int(log.split(f"resumed from {out_uri}/last at step ", 1)[1].split()[0])
        assert resumed_at >= stopped_at and _pointer_step(run) == 40
        assert (run / "best.ref.json").is_file() and (run / "metrics.jsonl").is_file()
        assert (run / "ray" / "srec-e2e").is_dir()  # --ray.storage_path defaults to OUT/ray, a URI here
        mirror = tmp_path / "node-cache" / "runs"
        assert not any(p.name == "ray" for p in mirror.glob("*/*"))  # Ray's own storage is not mirrored

        recs = tmp_path / "recs"
        batch = subprocess.run(
            [*submit, "--follow", "true", "--", "dist-srec", "recommend-batch", "--ckpt", f"{out_uri}/best",
             "--users", "all", "--k", "5", "--out", str(recs), "--ray.num_workers", "1", "--ray.address", "auto",
             "--progress", "false"],
            env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert batch.returncode == 0, batch.stdout[-3000:] + batch.stderr[-2000:]
        import pyarrow.parquet as pq

        table = pq.read_table(recs)
        assert table.num_rows > 0 and set(table.column("rank").to_pylist()) == {1, 2, 3, 4, 5}
        assert len(set(table.column("user_id").to_pylist())) == json.loads((data / "manifest.json").read_text())[
            "counts"]["num_users"]  # fmt: skip
    finally:
        os.killpg(head.pid, signal.SIGTERM)  # `ray start --block` shuts its node down on SIGTERM
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()


def test_launch_cli_maps_flags_to_configs(tmp_path: Path) -> None:
    from dist_srec.cli import llmsrec, teacher
    from dist_srec.cli.launch import ray_config
    from dist_srec.cli.main import parse

    ds = tmp_path / "ds.json"
    ds.write_text("{}")
    cmd, p, ns = parse(
        ["launch", "train", "--data", "D", "--teacher", "T", "--out", "O", "--ray.num_workers", "3",
         "--ray.use_gpu", "true", "--ray.max_failures", "2", "--deepspeed.stage", "3", "--deepspeed.override",
         str(ds), "--num_workers", "1"]
    )  # fmt: skip
    rc, run = ray_config(p, ns), llmsrec.run_config(p, ns)
    assert cmd.name == "train" and (rc.num_workers, rc.use_gpu, rc.max_failures, rc.torch_backend) == (
        3,
        True,
        2,
        "nccl",
    )
    assert run.num_workers == 1 and run.deepspeed.stage == 3  # loader workers stay the run config's field
    cmd, p, ns = parse(["launch", "pretrain-teacher", "--data", "D", "--out", "O", "--ray.num_workers", "2"])
    assert ray_config(p, ns).torch_backend == "gloo" and cmd.name == "pretrain-teacher"
    assert teacher.run_config(p, ns).train.loop.epochs == 200
