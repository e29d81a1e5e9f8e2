"""The classic recipe, done with the mixin: AlexNet with its conv features frozen, the classifier trains.

Subclass torchvision's AlexNet with ``Freezable``, name the groups, freeze the features, give the
optimizer only the trainable parameters, and train a few steps on synthetic data. The features do not
move; the classifier does.

    python examples/alexnet_classifier_only.py
"""

from __future__ import annotations

import torch
import torchvision
from torch import nn

import freezable as fz


class AlexNet(fz.Freezable, torchvision.models.AlexNet):
    freeze_groups = {"features": "features", "classifier": "classifier"}


def main(steps: int = 3, batch_size: int = 8, image_size: int = 64) -> dict[str, bool]:
    torch.manual_seed(0)
    model = AlexNet(num_classes=10)  # in real use: load ImageNet weights with load_state_dict
    model.freeze("features")
    optimizer = torch.optim.SGD(model.trainable_parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)

    features_before = {k: v.clone() for k, v in model.features.state_dict().items()}
    classifier_before = {k: v.clone() for k, v in model.classifier.state_dict().items()}
    images = torch.randn(batch_size, 3, image_size, image_size)
    labels = torch.randint(0, 10, (batch_size,))

    model.train()
    for step in range(steps):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        print(f"step {step}: loss {loss.item():.4f}")

    print(model.freeze_summary())
    features_still = all(torch.equal(v, model.features.state_dict()[k]) for k, v in features_before.items())
    classifier_moved = any(not torch.equal(v, model.classifier.state_dict()[k]) for k, v in classifier_before.items())
    print(f"features bit-identical after training: {features_still}")
    print(f"classifier moved: {classifier_moved}")
    return {"features_unchanged": features_still, "classifier_moved": classifier_moved}


if __name__ == "__main__":
    main()
