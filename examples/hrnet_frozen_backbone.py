"""A timm HRNet as the frozen backbone of a small heatmap head (pose-estimation style).

The model runs two inputs (say, an image and its neighbour frame) through the backbone at once by
concatenating them on the batch dimension, fuses HRNet's four branches and predicts keypoint heatmaps.
It trains in ``train()`` mode with no per-forward ``.eval()`` calls, yet the backbone's BatchNorm
statistics do not move: freezable holds them at inference.

    python examples/hrnet_frozen_backbone.py
"""

from __future__ import annotations

import timm
import torch
from torch import nn
from torch.nn import functional as F

import freezable as fz


class HeatmapModel(nn.Module):
    def __init__(self, num_keypoints: int = 17) -> None:
        super().__init__()
        hrnet = timm.create_model("hrnet_w18_small", pretrained=False, features_only=True,
                                  feature_location="", out_indices=(1, 2, 3, 4))
        self.backbone = fz.FrozenBackbone(hrnet, preset="timm.hrnet.backbone")
        channels = sum(hrnet.feature_info.channels())
        self.head = nn.Sequential(
            nn.Conv2d(2 * channels, 64, 1), nn.BatchNorm2d(64), nn.ReLU(), nn.Conv2d(64, num_keypoints, 1)
        )

    def forward(self, image: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        features = self.backbone(torch.cat([image, other], dim=0))  # one backbone pass for both
        size = features[0].shape[-2:]
        fused = torch.cat([F.interpolate(f, size=size, mode="bilinear", align_corners=False) for f in features], 1)
        first, second = fused.chunk(2, dim=0)
        return self.head(torch.cat([first, second], dim=1))


def main(steps: int = 3, batch_size: int = 4, image_size: int = 128) -> dict[str, bool]:
    torch.manual_seed(0)
    model = HeatmapModel()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    bn_stats = {k: v.clone() for k, v in model.backbone.state_dict().items() if "running" in k or "batches" in k}
    head_stats = model.head[1].running_mean.clone()

    model.train()  # puts the head in training mode; the frozen backbone stays at inference
    for step in range(steps):
        image, other = torch.randn(2, batch_size, 3, image_size, image_size)
        target = torch.rand(batch_size, 17, image_size // 4, image_size // 4)
        optimizer.zero_grad()
        loss = F.mse_loss(model(image, other), target)
        loss.backward()
        optimizer.step()
        print(f"step {step}: loss {loss.item():.4f}")

    print(model.backbone.freeze_summary())
    print(model.backbone)
    unchanged = all(torch.equal(v, model.backbone.state_dict()[k]) for k, v in bn_stats.items())
    head_moved = not torch.equal(head_stats, model.head[1].running_mean)
    print(f"backbone BatchNorm statistics bit-identical ({len(bn_stats)} tensors): {unchanged}")
    print(f"head BatchNorm statistics updated: {head_moved}")
    return {"backbone_stats_unchanged": unchanged, "head_stats_moved": head_moved}


if __name__ == "__main__":
    main()
