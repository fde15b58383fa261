"""Export a trained MPEE folder as the committed demo model (fp16 safetensors, < 50 MB).

    python tools/export_demo_model.py --src runs/sst2/mpee/final --dst weights/mpee-minilm-sst2 \
        --threshold 0.6 --r-ee 0.3 --card my_model_card.md

It folds each exit head's standardisation into the head (``head_norm`` models, docs L10: the exported
heads are Eq. (9) exactly), sets the operating point (F, R_ee) stored in the folder's
``mpee_config.json`` (the demo's default), writes ``task.json`` (task and label names, read by the
demo), copies the model card to ``MODEL_CARD.md``, and checks that the fp16 copy predicts like the fp32
source on the dev set.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mpee_ref.data import get_task, read_glue  # noqa: E402
from mpee_ref.mpee import load_mpee, save_mpee  # noqa: E402

LIMIT_BYTES = 50 * 1024 * 1024


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", required=True)
    ap.add_argument("--dst", default=str(REPO / "weights" / "mpee-minilm-sst2"))
    ap.add_argument("--task", default="sst-2")
    ap.add_argument("--threshold", type=float, required=True)
    ap.add_argument("--r-ee", type=float, required=True)
    ap.add_argument("--card", required=True, help="Markdown model card to copy to MODEL_CARD.md")
    ap.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data" / "glue"))
    args = ap.parse_args()

    source = load_mpee(args.src, threshold=args.threshold, r_ee=args.r_ee)
    model = load_mpee(args.src, threshold=args.threshold, r_ee=args.r_ee).fold_head_norms()
    spec = get_task(args.task)
    task = {"task": spec.name, "label_names": ["negative", "positive"] if spec.name == "sst-2"
            else list(spec.label_names)}
    dst = save_mpee(model, args.dst, dtype=torch.float16,
                    extra_files={"task.json": json.dumps(task, indent=2) + "\n",
                                 "MODEL_CARD.md": Path(args.card).read_text(encoding="utf-8")})
    size = (dst / "model.safetensors").stat().st_size
    if size > LIMIT_BYTES:
        raise SystemExit(f"{dst}/model.safetensors is {size / 2**20:.1f} MiB, over the 50 MB limit")

    half = load_mpee(dst)
    examples = read_glue(args.task, args.data_dir, "dev")
    pairs = [e.text_b for e in examples] if examples[0].text_b is not None else None
    enc = model.tokenizer([e.text_a for e in examples], pairs=pairs)
    a = source.infer(enc).predictions
    b = half.infer(enc).predictions
    labels = torch.tensor([e.label for e in examples])
    print(f"wrote {dst} ({size / 2**20:.1f} MiB); fp32 source accuracy {(a == labels).float().mean():.4f}, "
          f"fp16 folded accuracy {(b == labels).float().mean():.4f}, predictions differ on {(a != b).sum()} "
          f"of {len(examples)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
