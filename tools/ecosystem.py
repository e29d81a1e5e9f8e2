"""Freezing inside the tools people train with: each scenario run for real, counting what moved.

    python tools/ecosystem.py            # about 20 s on a CPU

Each row freezes a model the way a training script would meet it (in place, or wrapped), lets a tool
that freezable did not write act on it (timm's optimizer factory, ``convert_sync_batchnorm``, QAT,
fusion, the Hugging Face ``Trainer``, ``torch.save`` and a fresh process, ``unfreeze`` on what the model
built frozen), then counts the frozen tensors and how many of them moved (bit for bit). Every row must
end with 0 moved (and 0 mismatches); the process exits 1 otherwise. The two-process scenarios (DDP,
FSDP2, Lightning, Accelerate) are in ``tests/test_distributed.py``.
"""

from __future__ import annotations

import contextlib
import copy
import io
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import timm
import torch
import torch.ao.quantization as tq
import torchvision
from timm.optim import create_optimizer_v2
from torch import nn
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

import freezable as fz

Row = tuple[str, int, int]  # what was checked, how many frozen tensors (or compared items), how many moved


def _tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: t.detach().clone() for n, t in [*model.named_parameters(), *model.named_buffers()]}


def _moved(before: dict[str, torch.Tensor], model: nn.Module, names: list[str]) -> int:
    now = dict([*model.named_parameters(), *model.named_buffers()])
    return sum(not torch.equal(before[n], now[n]) for n in names)


def _frozen_names(model: nn.Module, *trainable: str) -> list[str]:
    """The parameters and buffers outside the trainable parts (named by their prefixes)."""
    return [n for n in _tensors(model) if not n.startswith(trainable)]


def _resnet18() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=4)


def _train(model: nn.Module, steps: int = 2) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)  # frozen ones included
    for _ in range(steps):
        opt.zero_grad(set_to_none=False)
        model.train()(torch.randn(4, 3, 64, 64)).square().mean().backward()
        opt.step()


def timm_optimizer_factory() -> list[Row]:
    """timm's create_optimizer_v2 with layer decay and weight decay: per parameter, as on the plain model."""
    rows = []
    make = lambda: timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, num_classes=4)  # noqa: E731
    torch.manual_seed(0)
    plain = make()
    names = {id(p): n for n, p in plain.named_parameters()}
    expected = {names[id(p)]: (g.get("lr_scale", 1.0), g["weight_decay"])
                for g in create_optimizer_v2(plain, weight_decay=0.05, layer_decay=0.75).param_groups
                for p in g["params"]}
    for form in ("in place", "wrapped"):
        torch.manual_seed(0)
        trainable = ["stem", "block11", "block12", "head"]
        model = fz.freeze(make(), trainable) if form == "in place" else fz.FrozenBackbone(make(), trainable)
        named = {id(p): n.removeprefix("backbone.") for n, p in model.named_parameters()}
        got = {named[id(p)]: (g.get("lr_scale", 1.0), g["weight_decay"])
               for g in create_optimizer_v2(model, weight_decay=0.05, layer_decay=0.75).param_groups
               for p in g["params"]}
        rows.append((f"timm create_optimizer_v2, layer_decay + weight_decay, {form}: parameters whose "
                     f"(lr_scale, weight_decay) differ from the plain model's", len(got),
                     sum(got[n] != expected[n] for n in got)))
    return rows


def sync_batchnorm() -> list[Row]:
    """convert_sync_batchnorm after freezing, then train() and training steps."""
    rows = []
    for convert_name, convert in (("torch", nn.SyncBatchNorm.convert_sync_batchnorm),
                                  ("timm", timm.layers.convert_sync_batchnorm)):
        for form in ("in place", "wrapped"):
            model = fz.freeze(_resnet18(), ["head"]) if form == "in place" else fz.FrozenBackbone(_resnet18(), ["head"])
            convert(model)
            body = model if form == "in place" else model.backbone
            before, frozen = _tensors(body), _frozen_names(body, "fc.")
            _train(model)
            rows.append((f"{convert_name} convert_sync_batchnorm after freezing, {form}: frozen tensors",
                         len(frozen), _moved(before, body, frozen)))
    return rows


def quantization_aware_training() -> list[Row]:
    """fuse_modules + prepare_qat after freezing a ResNet-18 body: weights, statistics, observers."""
    torch.manual_seed(0)
    model = fz.freeze(torchvision.models.quantization.resnet18(quantize=False, num_classes=4), ["head"])
    model.eval().fuse_model(is_qat=True)
    model.qconfig = tq.get_default_qat_qconfig("x86")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tq.prepare_qat(model.train(), inplace=True)
    model.train()(torch.randn(2, 3, 64, 64))  # observers that observed nothing yet take their ranges once
    before, frozen = _tensors(model), _frozen_names(model, "fc.")
    _train(model, steps=3)
    return [("QAT (fuse_model + prepare_qat) with a frozen body: frozen tensors (weights, BN statistics, "
             "observers, scales)", len(frozen), _moved(before, model, frozen))]


def hand_swap() -> list[Row]:
    """A layer replaced by hand with a copy whose parameters are frozen."""
    model = fz.freeze(_resnet18(), ["head"])
    new = copy.deepcopy(model.layer2[0].bn1)
    for m in new.modules():  # a plain copy: no freezable marks
        m.__dict__.pop("_freezable_frozen", None)
        m.__dict__.pop("_freezable_placed", None)
        m._forward_pre_hooks.clear()
    model.layer2[0].bn1 = new
    before, frozen = _tensors(model), _frozen_names(model, "fc.")
    _train(model)
    return [("a BatchNorm replaced by hand after freezing (frozen parameters): frozen tensors", len(frozen),
             _moved(before, model, frozen))]


def hugging_face_trainer() -> list[Row]:
    """Trainer.save_model of an in-place model, then from_pretrained of the plain class."""
    try:
        import transformers
    except ImportError:
        return []
    torch.manual_seed(0)
    config = transformers.BertConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=2,
                                     intermediate_size=64, vocab_size=100, max_position_embeddings=64)
    bert = fz.freeze(transformers.BertForSequenceClassification(config), ["head"])
    ids = torch.randint(1, 100, (8, 8), generator=torch.Generator().manual_seed(0))
    data = [{"input_ids": ids[i], "labels": int(ids[i, 0] % 2)} for i in range(8)]
    before, frozen = _tensors(bert), _frozen_names(bert, "classifier.", "bert.pooler.")  # BERT's head group: the pooler too
    with tempfile.TemporaryDirectory() as tmp:
        args = transformers.TrainingArguments(output_dir=tmp, num_train_epochs=2, per_device_train_batch_size=4,
                                              report_to=[], save_strategy="no", logging_strategy="no",
                                              use_cpu=True, disable_tqdm=True)
        trainer = transformers.Trainer(model=bert, args=args, train_dataset=data, eval_dataset=data)
        trainer.train()
        has_loss = "eval_loss" in trainer.evaluate()
        trainer.save_model(tmp)
        loaded = transformers.BertForSequenceClassification.from_pretrained(tmp)
        ours = bert.state_dict()
        unequal = sum(not torch.equal(v, ours[k]) for k, v in loaded.state_dict().items())
        unequal += len(set(ours) ^ set(loaded.state_dict())) + (not (Path(tmp) / "config.json").exists())
    return [("HF Trainer, in place: frozen tensors after 2 epochs", len(frozen), _moved(before, bert, frozen)),
            ("HF Trainer.save_model -> from_pretrained: tensors unequal or missing (or no config.json)",
             len(ours), unequal),
            ("HF Trainer.evaluate with labels and no label_names: evaluations without a loss", 1, int(not has_loss))]


def built_frozen() -> list[Row]:
    """Parameters the model was built with frozen, through unfreeze() and trainable=."""
    rows = []
    cases: dict[str, Callable[[], nn.Module]] = {
        "torchvision resnet_fpn_backbone(trainable_layers=3)":
            lambda: resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=3),
        "timm ViT with pos_embed fixed by hand": lambda: _fixed_pos_embed(),
    }
    for name, make in cases.items():
        for form in ("in place", "wrapped"):
            plain = make()
            built = [n for n, p in plain.named_parameters() if not p.requires_grad]
            model = fz.freeze(plain) if form == "in place" else fz.FrozenBackbone(plain)
            model.unfreeze()
            root = plain
            turned_on = sum(p.requires_grad for n, p in root.named_parameters() if n in built)
            rows.append((f"{name}, {form}: built-frozen parameters turned on by unfreeze()", len(built), turned_on))
    return rows


def _fixed_pos_embed() -> nn.Module:
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, num_classes=4)
    model.pos_embed.requires_grad_(False)
    return model


_FRESH = """
import sys, torch
model = torch.load(sys.argv[1], weights_only=False)
before = {k: v.clone() for k, v in model.state_dict().items()}
opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
for _ in range(2):
    opt.zero_grad(set_to_none=False)
    model.train()(torch.randn(4, 3, 64, 64)).square().mean().backward()
    opt.step()
frozen = [k for k in before if not k.startswith("fc.")]
print(len(frozen), sum(not torch.equal(before[k], model.state_dict()[k]) for k in frozen))
"""


def fresh_process() -> list[Row]:
    """torch.save of the whole in-place model, loaded and trained in a fresh process."""
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(fz.freeze(_resnet18(), ["head"]), Path(tmp) / "model.pt")
        out = subprocess.run([sys.executable, "-c", _FRESH, str(Path(tmp) / "model.pt")], capture_output=True,
                             text=True, check=True).stdout.split()
    return [("torch.save of the whole model, trained in a fresh process: frozen tensors", int(out[0]), int(out[1]))]


SCENARIOS = [timm_optimizer_factory, sync_batchnorm, quantization_aware_training, hand_swap, hugging_face_trainer,
             built_frozen, fresh_process]


def run() -> list[Row]:
    """Every scenario's rows."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):  # the Trainer prints its logs
        warnings.simplefilter("ignore")
        return [row for scenario in SCENARIOS for row in scenario()]


def main() -> int:
    rows = run()
    width = max(len(what) for what, _, _ in rows)
    print(f"{'scenario':<{width}}  {'checked':>7}  {'moved':>5}")
    for what, checked, moved in rows:
        print(f"{what:<{width}}  {checked:>7}  {moved:>5}")
    bad = [what for what, _, moved in rows if moved]
    print("ok: nothing frozen moved" if not bad else f"FAILED: {len(bad)} scenario(s) moved something")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
