"""Load a timm model's "pretrained" weights from a local file, then freeze it: the real loading path, offline.

The example writes a checkpoint itself (standing in for one you downloaded earlier), loads it through
timm's own pretrained machinery (``pretrained=True`` with ``pretrained_cfg_overlay=dict(file=...)``, the
path timm takes for hub weights too), wraps the model in ``FrozenBackbone`` and trains a new head.

    python examples/timm_pretrained_local.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import timm
import torch
from torch import nn

import freezable as fz


def main(steps: int = 3, model_name: str = "resnet18", image_size: int = 64) -> dict[str, bool]:
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / f"{model_name}.pth"
        source = timm.create_model(model_name, pretrained=False)
        torch.save(source.state_dict(), weights)

        backbone = timm.create_model(model_name, pretrained=True, num_classes=0,
                                     pretrained_cfg_overlay=dict(file=str(weights)))
    loaded = all(torch.equal(v, source.state_dict()[k]) for k, v in backbone.state_dict().items())
    print(f"weights loaded from the local file: {loaded}")

    fb = fz.FrozenBackbone(backbone)
    head = nn.Linear(fb.num_features, 5)
    model = nn.Sequential(fb, head).train()
    optimizer = torch.optim.SGD(head.parameters(), lr=0.1)
    for step in range(steps):
        images, labels = torch.randn(8, 3, image_size, image_size), torch.randint(0, 5, (8,))
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        print(f"step {step}: loss {loss.item():.4f}")
    print(fb)
    still = all(torch.equal(v, source.state_dict()[k]) for k, v in fb.state_dict().items())
    print(f"backbone still equals the file after training: {still}")
    return {"loaded": loaded, "unchanged": still}


if __name__ == "__main__":
    main()
