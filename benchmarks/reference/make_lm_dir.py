"""A Hugging Face LM directory for the reference's `--llm_path`: dist-srec's LM (default: the embedded
SmolLM2-135M, converted from its GGUF), optionally cut to its first k decoder layers, as dist-srec's
`--llm.num_layers k` does.

    .venv/bin/python benchmarks/reference/make_lm_dir.py                        # prints the full model's dir
    .venv/bin/python benchmarks/reference/make_lm_dir.py --num_layers 8 --out /work/scratch/smollm2-l8

dist-srec's `num_layers` (dist_srec/models/lm_sources.py `load_causal_lm`) loads the model with
`config.num_hidden_layers = k`: the first k layers' weights are read, the rest are ignored, and the
final RMSNorm still applies, so `last_hidden_state` is norm(layer k output). The reference reads
`hidden_states[-1]` of the causal-LM forward, which is the same tensor. A directory whose config.json
says `num_hidden_layers: k` gives the reference exactly that model: this script links the weights and
tokenizer files of the full directory and writes the edited config.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from dist_srec.models.lm_config import LLMConfig
from dist_srec.models.lm_sources import resolve_llm_path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llm", default="smollm2", help="dist-srec --llm.path (smollm2 or a local HF directory)")
    ap.add_argument("--num_layers", type=int, default=None)
    ap.add_argument("--out", type=Path, default=None, help="where to write the truncated directory")
    args = ap.parse_args(argv)
    src = Path(resolve_llm_path(LLMConfig(path=args.llm)))
    if args.num_layers is None:
        print(src)
        return 0
    if args.out is None:
        raise SystemExit("--num_layers needs --out")
    config = json.loads((src / "config.json").read_text())
    if not 1 <= args.num_layers <= config["num_hidden_layers"]:
        raise SystemExit(f"--num_layers must be in 1..{config['num_hidden_layers']}")
    args.out.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.name == "config.json" or not f.is_file():
            continue
        dst = args.out / f.name
        if dst.exists() or dst.is_symlink():
            dst.unlink()
        if f.suffix == ".safetensors":
            dst.symlink_to(f.resolve())
        else:
            shutil.copy2(f, dst)
    config["num_hidden_layers"] = args.num_layers
    for key in ("layer_types",):  # per-layer lists, where a config has them, must match the depth
        if isinstance(config.get(key), list):
            config[key] = config[key][: args.num_layers]
    (args.out / "config.json").write_text(json.dumps(config, indent=2))
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
