"""Re-save a trained checkpoint for shipping inside the package: fp16 tensors (half the size;
the README's quality table is measured on these files), the training summary kept.

    python scripts/export_builtin.py runs/lite-x4/model.safetensors clipsr_cli/weights/clipsr-lite-x4.safetensors
"""

import hashlib
import json
import sys
from pathlib import Path

import torch

from clipsr_cli.model.network import build_model
from clipsr_cli.model.checkpoint import read_checkpoint, save_checkpoint


def main(src: str, dst: str) -> None:
    config, state, meta = read_checkpoint(src)
    model = build_model(config)
    model.load_state_dict({k: v.float() for k, v in state.items()})
    training = json.loads(meta["training"]) if "training" in meta else None
    out = save_checkpoint(dst, model, config, training=training, dtype=torch.float16)
    data = Path(out).read_bytes()
    print(json.dumps({"file": str(out), "size": len(data),
                      "sha256": hashlib.sha256(data).hexdigest()}))


if __name__ == "__main__":
    main(*sys.argv[1:3])
