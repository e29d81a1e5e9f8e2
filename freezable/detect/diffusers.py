"""diffusers models (``diffusers.ModelMixin``): UNets and autoencoders, by their attribute names.

A UNet (``UNet2DModel``, ``UNet2DConditionModel`` and the others with ``conv_in``, ``down_blocks``,
``up_blocks`` and ``conv_out``) gets, in forward order:

* ``stem``: its input side, every child that is neither a block nor an output layer: ``conv_in``, the
  time embedding (``time_proj``, ``time_embedding``) and, where the model has them, the class and added
  condition embeddings and ``encoder_hid_proj``;
* ``down_block1`` ... ``down_blockN`` (``down_blocks[i - 1]``), ``mid_block``, ``up_block1`` ...
  ``up_blockN`` (``up_blocks[i - 1]``);
* ``head``: its output layers, ``conv_norm_out``, ``conv_act``, ``conv_out``;
* the umbrellas ``down_blocks`` and ``up_blocks``.

An autoencoder (``AutoencoderKL`` and the others with ``encoder`` and ``decoder``) gets its parts in
forward order: ``encoder``, ``quant_conv``, ``quantize``, ``post_quant_conv``, ``decoder``, those it has
(each a plain umbrella: the stages inside the encoder and the decoder have no group of their own).
Other diffusers models (transformers, ControlNets) get no groups.

diffusers is never imported here: a model of it can only exist when it is in ``sys.modules``.
"""

from __future__ import annotations


from torch import nn

from ._parts import Groups, has_params, instance_of

__all__ = ["diffusers_groups", "is_diffusers_model"]

_OUT = ("conv_norm_out", "conv_act", "conv_out")
_AUTOENCODER = ("encoder", "quant_conv", "quantize", "post_quant_conv", "decoder")  # forward order


def is_diffusers_model(model: object) -> bool:
    """Whether ``model`` is a ``diffusers.ModelMixin`` (without importing diffusers)."""
    return instance_of(model, "diffusers.models.modeling_utils", "ModelMixin")


def diffusers_groups(model: nn.Module) -> Groups | None:
    """The groups of a diffusers UNet or autoencoder; ``None`` for anything else.

    Example:
        >>> from diffusers import UNet2DModel
        >>> unet = UNet2DModel(block_out_channels=(8, 16), norm_num_groups=4, layers_per_block=1,
        ...                    down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
        >>> list(diffusers_groups(unet))
        ['stem', 'down_block1', 'down_block2', 'mid_block', 'up_block1', 'up_block2', 'head', 'down_blocks', 'up_blocks']
        >>> diffusers_groups(unet)["stem"]
        ('conv_in', 'time_proj', 'time_embedding')
    """
    if not is_diffusers_model(model):
        return None
    children = {name: child for name, child in model.named_children() if child is not None}
    if all(isinstance(children.get(n), nn.ModuleList) for n in ("down_blocks", "up_blocks")) and "conv_in" in children:
        return _unet(model, children)
    if "encoder" in children and "decoder" in children:
        return {name: (name,) for name in _AUTOENCODER if name in children and has_params(children[name])}
    return None


def _unet(model: nn.Module, children: dict[str, nn.Module]) -> Groups:
    blocks = ("down_blocks", "mid_block", "up_blocks")
    groups: Groups = {"stem": tuple(n for n in children if n not in blocks + _OUT)}
    groups.update((f"down_block{i + 1}", (f"down_blocks.{i}",)) for i in range(len(children["down_blocks"])))
    if "mid_block" in children:
        groups["mid_block"] = ("mid_block",)
    groups.update((f"up_block{i + 1}", (f"up_blocks.{i}",)) for i in range(len(children["up_blocks"])))
    groups["head"] = tuple(n for n in _OUT if n in children)
    groups["down_blocks"], groups["up_blocks"] = ("down_blocks",), ("up_blocks",)
    return {name: members for name, members in groups.items()
            if any(has_params(model.get_submodule(m)) for m in members)}
