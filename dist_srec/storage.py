"""Where runs read and write: local paths, or URIs (`s3://`, `gs://`, `hdfs://`, `file://`, and any
fsspec scheme) through `pyarrow.fs`.

Reading a directory given as a URI:
    checkpoint (teacher, `--ckpt`): staged, i.e. downloaded once into the local cache and read there;
    data dir (`--data`): its small files (manifest, catalog parquet) are staged; its shards are not:
        the loader streams each one from the URI into memory and checks its sha256 before reading it.
The stage of a URI lives in `cache_root()/staged/<key>`, keyed by the URI and the version it points
to, so that a node downloads a version once and a changed source is fetched again.

Writing a run (`--out URI`): the run works in a local mirror, `cache_root()/runs/<key of the URI>`,
pulled from the URI when it starts (so it resumes) and published to it after every checkpoint. Object
stores have no rename, so a checkpoint directory NAME is uploaded to a fresh version,
`.versions/NAME-<step>-<id>/`, and then made current by one single-object write of the pointer
`NAME.ref.json` (a reader sees the old version or the new one, never a mix); the version it replaced is
deleted afterwards. Other files (run file, metrics, TensorBoard events) are uploaded when changed.

Every node stages and mirrors on its own disk, so multi-node runs need no shared POSIX mount.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

from dist_srec.errors import CheckpointError, ConfigError, DataError
from dist_srec.io import atomic_path, sha256_file

REF_SUFFIX = ".ref.json"
"""`NAME.ref.json` beside a published checkpoint directory NAME names its current version."""
VERSIONS = ".versions"
STAGE_DONE = ".staged.json"
"""Written last into a staged directory: what it is a copy of (an interrupted download has none)."""
REMOTE_DATA = "remote.json"
"""In a staged data directory: the URI its shards stream from."""
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")


def is_uri(path: str | os.PathLike) -> bool:
    """True for `scheme://...` (a local path, relative or absolute, is not a URI)."""
    return bool(_URI.match(str(path)))


def join(base: str | os.PathLike, *names: str) -> str:
    """`base/names...` for a URI or a local path."""
    return "/".join([str(base).rstrip("/"), *names]) if is_uri(base) else str(Path(base, *names))


def cache_root() -> Path:
    """`$DIST_SREC_CACHE`, else `~/.cache/dist-srec`: stages of URIs and mirrors of remote runs."""
    return Path(os.environ.get("DIST_SREC_CACHE") or Path.home() / ".cache" / "dist-srec")


def filesystem(uri: str) -> tuple[Any, str]:
    """(pyarrow FileSystem, path inside it) of a URI: pyarrow's own schemes (s3, gs, hdfs, file, ...),
    else fsspec's (wrapped in `pyarrow.fs.PyFileSystem`), so both go through the same calls."""
    import pyarrow.fs as pafs  # deferred: only URIs need it

    try:
        return pafs.FileSystem.from_uri(uri)
    except Exception as pa_error:  # pyarrow does not know the scheme; fsspec may
        import fsspec  # deferred: only schemes pyarrow lacks need it

        try:
            fs, path = fsspec.core.url_to_fs(uri)
        except (ImportError, ValueError) as e:
            raise ConfigError(f"cannot open {uri}: {pa_error}; fsspec: {e}") from e
        return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def _info(uri: str) -> Any:
    fs, path = filesystem(uri)
    return fs.get_file_info(path)


def exists(uri: str) -> bool:
    import pyarrow.fs as pafs  # deferred: only URIs need it

    return _info(uri).type != pafs.FileType.NotFound


def read_bytes(uri: str) -> bytes:
    """The whole object at `uri` (a shard, a manifest); `DataError` naming it if it cannot be read."""
    fs, path = filesystem(uri)
    try:
        with fs.open_input_stream(path) as f:
            return f.read()
    except (OSError, FileNotFoundError) as e:
        raise DataError(f"cannot read: {e}", path=uri) from e


def write_bytes(uri: str, data: bytes) -> None:
    """One single-object write (atomic on object stores; on a local filesystem, through a rename)."""
    fs, path = filesystem(uri)
    parent = path.rsplit("/", 1)[0]
    if parent:
        fs.create_dir(parent, recursive=True)
    tmp = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
    with fs.open_output_stream(tmp) as f:
        f.write(data)
    fs.move(tmp, path)  # a file move: a rename locally, copy + delete on an object store


def _listing(uri: str, with_mtime: bool = False) -> dict[str, Any]:
    """{relative path: size} of every file under the directory `uri` ({} if there is none); with
    `with_mtime`, {relative path: [size, mtime ns]}."""
    import pyarrow.fs as pafs  # deferred: only URIs need it

    fs, path = filesystem(uri)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return {}
    base = path.rstrip("/") + "/"
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    files = [i for i in infos if i.type == pafs.FileType.File]
    if with_mtime:
        return {i.path[len(base) :]: [i.size, i.mtime_ns] for i in files}
    return {i.path[len(base) :]: i.size for i in files}


def _download(uri: str, files: dict[str, int], dest: Path) -> None:
    for rel in files:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(read_bytes(join(uri, rel)))


def _key(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:20]


def _staged(kind: str, uri: str, version: str, fetch: Any) -> Path:
    """The local copy of (uri, version), made by `fetch(tmp_dir)` unless a complete one exists. The
    ranks of one machine stage the same URI at once: the first makes it (under a file lock), the others
    wait and find it complete."""
    dest = cache_root() / "staged" / kind / _key(uri, version)
    done = dest / STAGE_DONE
    want = {"uri": uri, "version": version}
    if done.is_file() and json.loads(done.read_text()) == want:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest.with_name(dest.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or when the process dies
        if done.is_file() and json.loads(done.read_text()) == want:
            return dest
        with atomic_path(dest) as tmp:
            tmp.mkdir()
            fetch(tmp)
            (tmp / STAGE_DONE).write_text(json.dumps(want))
    return dest


def _current(uri: str) -> tuple[str, dict[str, Any]]:
    """(the directory holding `uri`'s current content, its pointer or {}): a published checkpoint's
    pointer `uri.ref.json` names a version; without one, `uri` itself is the directory."""
    ref = uri.rstrip("/") + REF_SUFFIX
    if not exists(ref):
        return uri, {}
    doc = json.loads(read_bytes(ref))
    return join(uri.rstrip("/").rsplit("/", 1)[0], doc["dir"]), doc


def local_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint directory on local disk: `path` itself, or the stage of a URI (see the module
    docstring). A published checkpoint's files are checked against its pointer's sha256s."""
    if not is_uri(path):
        return Path(path)
    uri = str(path)
    src, ref = _current(uri)
    files = _listing(src, with_mtime=not ref)
    if not files:
        raise CheckpointError(f"checkpoint {uri} has no files (nothing at {src})")
    # a published version never changes; a plain directory is known by its files' sizes and mtimes,
    # so one rewritten in place (same tensor shapes, so the same sizes) is fetched again
    version = ref.get("dir") or json.dumps(sorted(files.items()))

    def fetch(tmp: Path) -> None:
        _download(src, files, tmp)
        for rel, digest in ref.get("sha256", {}).items():
            if sha256_file(tmp / rel) != digest:
                raise CheckpointError(
                    f"checkpoint file {join(src, rel)} does not match the sha256 of {uri}{REF_SUFFIX}"
                )

    return _staged("checkpoints", uri, version, fetch)


def local_data(path: str | os.PathLike, shards_dir: str = "shards") -> Path:
    """A prepared data directory on local disk: `path` itself, or, for a URI, a stage of everything but
    `shards_dir/` plus `remote.json` naming the URI, so the loader streams the shards from it."""
    if not is_uri(path):
        return Path(path)
    uri = str(path).rstrip("/")
    manifest = join(uri, "manifest.json")
    if not exists(manifest):
        raise DataError("not a prepared data directory (run `dist-srec prepare`)", path=manifest)
    files = {k: v for k, v in _listing(uri).items() if not k.startswith(f"{shards_dir}/")}
    version = hashlib.sha256(read_bytes(manifest)).hexdigest()

    def fetch(tmp: Path) -> None:
        _download(uri, files, tmp)
        (tmp / REMOTE_DATA).write_text(json.dumps({"uri": uri}))

    return _staged("data", uri, version, fetch)


def remote_source(local: Path) -> str | None:
    """The URI a staged data directory streams its shards from (None for a local directory)."""
    marker = Path(local) / REMOTE_DATA
    return json.loads(marker.read_text())["uri"] if marker.is_file() else None


def data_name(local: Path) -> str:
    """How a data directory is named in checkpoints and results: its URI, else its absolute path."""
    return remote_source(local) or str(Path(local).resolve())


def checkpoint_step(path: Path) -> int | None:
    """The optimizer step a checkpoint directory was saved at: its train_state.json's global_step, else
    the step of the validation its config.json records (a `best`); None if neither says."""
    try:
        if (path / "train_state.json").is_file():
            return int(json.loads((path / "train_state.json").read_text())["train_state"]["global_step"])
        if (path / "config.json").is_file():
            return int(json.loads((path / "config.json").read_text())["validation"]["step"])
    except (KeyError, TypeError, ValueError):
        return None
    return None


def run_dir_of(ckpt: str | os.PathLike) -> Path:
    """The local run directory of a checkpoint (where evaluations and vector caches go beside it): its
    parent, or for a URI checkpoint the local mirror of the run it was published in."""
    if is_uri(ckpt):
        return RunDir(str(ckpt).rstrip("/").rsplit("/", 1)[0]).local
    return Path(ckpt).resolve().parent


class RunDir:
    """A run's output directory: `local` is where the run writes; for a URI it is a mirror, and
    `pull` / `publish` move it (see the module docstring). For a local path both do nothing.

    The mirror remembers, in `.published.json`, what it last pulled or published (each file's size and
    mtime; each checkpoint's files and version), so only changes travel, from any process.

    Args:
        out: the run's `--out`, a local path or a URI.
        checkpoints: the names of its checkpoint directories (published through pointers).
        skip: top-level names neither pulled nor published: caches, and `ray/`, where Ray Train keeps
            its own checkpoints when `--ray.storage_path` defaults to OUT/ray (Ray writes it directly).
    """

    STATE = ".published.json"

    def __init__(self, out: str | os.PathLike, checkpoints: tuple[str, ...] = ("last", "best"),
                 skip: tuple[str, ...] = ("cache", "ray")):  # fmt: skip
        self.out = str(out)
        self.remote = self.out.rstrip("/") if is_uri(out) else None
        self.local = cache_root() / "runs" / _key(self.remote) if self.remote else Path(out)
        self.checkpoints, self.skip = checkpoints, skip

    def __repr__(self) -> str:
        return f"RunDir({self.out!r})"

    def _state(self) -> dict[str, Any]:
        path = self.local / self.STATE
        return json.loads(path.read_text()) if path.is_file() else {}

    def _save_state(self, state: dict[str, Any]) -> None:
        with atomic_path(self.local / self.STATE) as tmp:
            tmp.write_text(json.dumps(state, sort_keys=True))

    @staticmethod
    def _stamp(p: Path) -> list[Any]:
        if p.is_file():
            st = p.stat()
            return [st.st_size, st.st_mtime_ns]
        return [[q.relative_to(p).as_posix(), *RunDir._stamp(q)] for q in sorted(p.rglob("*")) if q.is_file()]

    def _pointer(self, name: str) -> dict[str, Any] | None:
        ref = join(self.remote, name + REF_SUFFIX)
        return json.loads(read_bytes(ref)) if exists(ref) else None

    def pull(self) -> None:
        """Bring the remote run into the local mirror (its checkpoints' current versions, its files), so
        that a run on any machine resumes where the last one published. A local checkpoint is kept when
        it is at least as far as the published one (`checkpoint_step`; e.g. one Ray Train has just
        restored), or, where steps are unknown, when it is the very version last pulled or published."""
        if self.remote is None:
            return
        self.local.mkdir(parents=True, exist_ok=True)
        state = self._state()
        for name in self.checkpoints:
            ref, local = self._pointer(name), self.local / name
            if ref is None:
                continue
            if local.is_dir():
                mine, theirs = checkpoint_step(local), ref.get("step")
                have = state.get(f"{name}/")
                if mine is not None and theirs is not None:
                    if mine >= theirs:
                        continue
                elif have and have[1] == ref["dir"] and have[0] == self._stamp(local):
                    continue
            staged = local_checkpoint(join(self.remote, name))
            with atomic_path(self.local / name) as tmp:
                shutil.copytree(staged, tmp, ignore=shutil.ignore_patterns(STAGE_DONE))
            state[f"{name}/"] = [self._stamp(self.local / name), ref["dir"]]
        for rel, size in _listing(self.remote).items():
            top = rel.split("/", 1)[0]
            if top == VERSIONS or top.endswith(REF_SUFFIX) or top in self.skip:
                continue
            target = self.local / rel
            if not (target.is_file() and target.stat().st_size == size):
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(read_bytes(join(self.remote, rel)))
            state[rel] = self._stamp(target)
        self._save_state(state)

    def publish(self) -> None:
        """Upload what changed in the local mirror since it was last pulled or published (rank 0)."""
        if self.remote is None or not self.local.is_dir():
            return
        state = self._state()
        for entry in sorted(self.local.iterdir()):
            name = entry.name
            if name in self.skip or name.startswith("."):
                continue  # caches, lock files, interrupted-write temporaries, this mirror's state
            if entry.is_dir() and name in self.checkpoints:
                stamp = self._stamp(entry)
                if (state.get(f"{name}/") or [None])[0] != stamp:
                    state[f"{name}/"] = [stamp, self._publish_checkpoint(entry)]
                continue
            for f in [entry] if entry.is_file() else sorted(p for p in entry.rglob("*") if p.is_file()):
                rel = f.relative_to(self.local).as_posix()
                if state.get(rel) != self._stamp(f):
                    write_bytes(join(self.remote, rel), f.read_bytes())
                    state[rel] = self._stamp(f)
        self._save_state(state)

    def _publish_checkpoint(self, src: Path) -> str:
        """Upload `src` as a new version, point `NAME.ref.json` at it, delete the one it replaced."""
        digests = {
            p.relative_to(src).as_posix(): sha256_file(p) for p in sorted(src.rglob("*")) if p.is_file()
        }
        version = f"{VERSIONS}/{src.name}-{uuid.uuid4().hex[:12]}"
        for rel in digests:
            write_bytes(join(self.remote, version, rel), (src / rel).read_bytes())
        old = self._pointer(src.name)
        ref = {"dir": version, "sha256": digests, "step": checkpoint_step(src)}
        write_bytes(join(self.remote, src.name + REF_SUFFIX), json.dumps(ref).encode())
        if old is not None and old["dir"] != version:
            fs, path = filesystem(join(self.remote, old["dir"]))
            fs.delete_dir(path)
        return version
