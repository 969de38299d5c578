"""Cluster job submission: the example cluster specs parse and use documented fields; a job submitted
through `launch/submit.py` (Ray Jobs SDK) to a loopback-only local head runs and succeeds."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from dist_srec.cluster.submit import SubmitConfig
from dist_srec.errors import ConfigError

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
    assert set(spec) <= RAYJOB_SPEC and "launch/train.py train" in spec["entrypoint"]
    assert yaml.safe_load(spec["runtimeEnvYAML"])["working_dir"]
    rc = spec["rayClusterSpec"]
    assert set(rc) <= CLUSTER_SPEC and set(rc["headGroupSpec"]) <= {"rayStartParams", "template", "serviceType",
                                                                    "headService", "enableIngress"}  # fmt: skip
    for g in rc["workerGroupSpecs"]:
        assert set(g) <= WORKER_GROUP
        limits = g["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert int(limits["nvidia.com/gpu"]) * g["replicas"] >= 1
    assert "--ray.use_gpu true" in spec["entrypoint"] and "--deepspeed.stage 3" in spec["entrypoint"]


def test_submit_config_validates_and_builds_runtime_env(tmp_path: Path) -> None:
    req = tmp_path / "req.txt"
    req.write_text("webdataset==1.0.2\n")
    env = SubmitConfig(
        entrypoint="python -V", working_dir=str(REPO), pip=str(req), env_vars={"A": "1"}
    ).runtime_env()
    assert env["working_dir"] == str(REPO) and env["pip"] == str(req) and env["env_vars"] == {"A": "1"}
    assert ".venv/" in env["excludes"] and "runs/" in env["excludes"]
    with pytest.raises(ConfigError, match="entrypoint"):
        SubmitConfig(entrypoint=" ")
    with pytest.raises(ConfigError, match="does not exist"):
        SubmitConfig(entrypoint="python -V", pip=str(tmp_path / "missing.txt"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # about 60-70 s on 2 busy cores: head start-up, upload, a Ray Train run
@pytest.mark.distributed
def test_submit_tiny_job_to_local_head(srec_setup, tmp_path: Path) -> None:
    """`ray start --head` on 127.0.0.1 only (blocking, in its own session, so exactly this cluster is
    stopped afterwards); launch/submit.py --follow submits `launch/train.py pretrain-teacher` on one
    Ray Train worker (a one-epoch tiny teacher); its logs stream and it SUCCEEDS."""
    data, _ = srec_setup
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    gcs, dash = _free_port(), _free_port()
    temp = Path("/tmp") / f"ray-dsj-{os.getpid()}"  # short: unix socket paths have a length limit
    head = subprocess.Popen(
        [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
         f"--port={gcs}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--num-cpus=2",
         "--object-store-memory=200000000", f"--temp-dir={temp}", "--include-dashboard=true", "--disable-usage-stats"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        from ray.job_submission import JobSubmissionClient

        address = f"http://127.0.0.1:{dash}"
        for _ in range(120):  # the job server comes up a few seconds after the head
            try:
                JobSubmissionClient(address).list_jobs()
                break
            except Exception:
                time.sleep(1)
        out_dir = tmp_path / "teacher"
        entry = [sys.executable, "launch/train.py", "pretrain-teacher", "--data", str(data), "--out", str(out_dir),
                 "--ray.num_workers", "1", "--train.loop.epochs", "1", "--train.loop.eval_every_epochs", "1",
                 "--train.eval_negatives", "20", "--train.batch_size", "16", "--model.hidden", "16",
                 "--model.max_len", "20", "--train.loop.progress", "false", "--final_eval", "false"]  # fmt: skip
        out = subprocess.run(
            [sys.executable, str(REPO / "launch" / "submit.py"), "--address", address, "--follow", "--", *entry],
            env=env, capture_output=True, text=True, timeout=240,
        )  # fmt: skip
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        assert "submitted job" in out.stdout and "ray job logs --address" in out.stdout
        assert "ray train: finished" in out.stdout and "SUCCEEDED" in out.stdout
        assert (out_dir / "best" / "model.safetensors").is_file() and (out_dir / "metrics.jsonl").is_file()
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
