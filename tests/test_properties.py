"""B1-B6 of API.md under random use, checked against an independent oracle (hypothesis).

Random module trees: Sequential, ModuleList, ModuleDict and custom containers nested several
levels, with Linear, Conv1d, BatchNorm1d and Dropout leaves, and submodules that appear twice
(shared). Random sequences of register_freeze_group / freeze / unfreeze (with ``train_bn``) /
``train`` and ``eval`` on the model or on an inner module / training steps with an optimizer
holding every parameter / deepcopy / state-dict round trips / whole-module save and load /
``freeze_state`` through JSON into a fresh model with ``load_freeze_state``.

The oracle does not ask freezable what should be frozen: it replays the operations on sets of
names (resolved with plain ``nn.Module`` traversal) and simulates plain PyTorch's modes. After
every step it checks, among others: frozen parameters have ``requires_grad=False`` and no
gradient, the rest ``True`` (B1); a training step with SGD (momentum, weight decay) leaves
frozen parameters and held modules' buffers bit-identical (B1, B2); a forward in the current
modes leaves held buffers unchanged and every held module computes what the same module of an
all-eval copy computes on the same input (B2, B3); every other module's mode is plain
PyTorch's (B5); ``state_dict`` keys are the plain model's and load both ways (B6).

A second test widens the operations: module swaps (a BatchNorm converted to SyncBatchNorm, a layer
replaced with a copy), weights loaded with ``assign=True``, a FrozenBackbone (``fast=True`` or not) built
around the body and nested in the mixin model, its own groups frozen and unfrozen; every frozen tensor
stays bit-identical and every forward equals the plain model's (see the comment above it).

CI runs the "ci" profile (tests/conftest.py); ``pytest --hypothesis-profile=long
tests/test_properties.py`` runs the long one.
"""

from __future__ import annotations

import copy
import io
import json

import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import freezable as fz
from freezable._state import is_held

F = 3  # every leaf maps (N, F) to (N, F)
X = torch.randn(6, F, generator=torch.Generator().manual_seed(0))


class Conv(nn.Module):
    """A 1x1 Conv1d leaf on (N, F)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(F, F, 1)

    def forward(self, x):
        return self.conv(x.unsqueeze(-1)).squeeze(-1)


class Chain(nn.Module):
    """Children in a ModuleList, applied in order."""

    def __init__(self, children: list[nn.Module]) -> None:
        super().__init__()
        self.items = nn.ModuleList(children)

    def forward(self, x):
        for m in self.items:
            x = m(x)
        return x


class DictChain(nn.Module):
    """Children in a ModuleDict, applied in order."""

    def __init__(self, children: list[nn.Module]) -> None:
        super().__init__()
        self.items = nn.ModuleDict({f"k{i}": m for i, m in enumerate(children)})

    def forward(self, x):
        for m in self.items.values():
            x = m(x)
        return x


class Residual(nn.Module):
    """x + body(x), a custom container."""

    def __init__(self, children: list[nn.Module]) -> None:
        super().__init__()
        self.body = nn.Sequential(*children)

    def forward(self, x):
        return x + self.body(x)


class Plain(nn.Module):
    """The model without the mixin."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body
        self.head = nn.Linear(F, 1)

    def forward(self, x):
        return self.head(self.body(x))


class Model(fz.Freezable, Plain):
    """The same model with the mixin."""


LEAVES = {"linear": lambda: nn.Linear(F, F), "conv": Conv, "bn": lambda: nn.BatchNorm1d(F),
          "dropout": lambda: nn.Dropout(0.5)}
CONTAINERS = {"seq": lambda c: nn.Sequential(*c), "list": Chain, "dict": DictChain, "residual": Residual}

leaf = st.sampled_from(sorted(LEAVES)) | st.sampled_from([("shared", 0), ("shared", 1)])
trees = st.recursive(
    leaf,
    lambda children: st.tuples(st.sampled_from(sorted(CONTAINERS)), st.lists(children, min_size=1, max_size=3)),
    max_leaves=8,
)


def build(tree, shared: dict[int, nn.Module]) -> nn.Module:
    if isinstance(tree, str):
        return LEAVES[tree]()
    if tree[0] == "shared":
        if tree[1] not in shared:
            shared[tree[1]] = nn.Linear(F, F) if tree[1] == 0 else nn.BatchNorm1d(F)
        return shared[tree[1]]
    kind, children = tree
    return CONTAINERS[kind]([build(c, shared) for c in children])


# -- the oracle ------------------------------------------------------------------------------------------------------


class Oracle:
    """What should hold, replayed from the operations on canonical names (first names in the model's order)."""

    def __init__(self, model: nn.Module) -> None:
        self.groups: dict[str, list[str]] = {}
        self.frozen: set[str] = set()  # parameter names
        self.marked: set[str] = set()  # module names
        self.mode = {name: m.training for name, m in model.named_modules()}
        self.own_mode = model.training

    # plain-PyTorch traversal only
    @staticmethod
    def names(model: nn.Module) -> tuple[dict[int, str], dict[int, str]]:
        return ({id(m): n for n, m in model.named_modules()}, {id(p): n for n, p in model.named_parameters()})

    def members(self, model: nn.Module, specs: list[str] | None) -> tuple[list[str], list[str]]:
        modules, params = self.names(model)
        mods: list[str] = []
        prms: list[str] = []
        for spec in specs if specs is not None else [""]:
            try:
                sub = model.get_submodule(spec)
            except AttributeError:
                prms.append(params[id(model.get_parameter(spec))])
                continue
            mods += [modules[id(m)] for m in sub.modules()]
            prms += [params[id(p)] for p in sub.parameters()]
        return mods, prms

    def held(self, model: nn.Module) -> set[str]:
        modules, params = self.names(model)
        out: set[str] = set()

        def visit(m: nn.Module) -> bool:
            ok = (modules[id(m)] in self.marked
                  and all(params[id(p)] in self.frozen for p in m.parameters(recurse=False)))
            ok = all([visit(c) for c in m.children()]) and ok
            if ok:
                out.add(modules[id(m)])
            return ok

        visit(model)
        return out

    def _apply(self, model: nn.Module, change) -> None:
        before = self.held(model)
        change()
        for name in before - self.held(model):
            self.mode[name] = self.own_mode  # unfrozen modules return to the model's own mode

    def freeze(self, model: nn.Module, groups: list[str], train_bn: bool) -> None:
        def change():
            owners = {n: type(model.get_submodule(n.rpartition(".")[0])) for _, n in self.names(model)[1].items()}
            for g in groups or [None]:
                mods, prms = self.members(model, self.groups[g] if g else None)
                for n in mods:
                    is_norm = isinstance(model.get_submodule(n), nn.BatchNorm1d)
                    (self.marked.discard if train_bn and is_norm else self.marked.add)(n)
                for n in prms:
                    (self.frozen.discard if train_bn and owners[n] is nn.BatchNorm1d else self.frozen.add)(n)

        self._apply(model, change)

    def unfreeze(self, model: nn.Module, groups: list[str]) -> None:
        def change():
            for g in groups or [None]:
                mods, prms = self.members(model, self.groups[g] if g else None)
                self.marked -= set(mods)
                self.frozen -= set(prms)

        self._apply(model, change)

    def train(self, model: nn.Module, name: str, mode: bool) -> None:
        for n in self.members(model, [name])[0]:
            self.mode[n] = mode
        if name == "":
            self.own_mode = mode


# -- checks ----------------------------------------------------------------------------------------------------------


def tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    out = {n: p.detach().clone() for n, p in model.named_parameters()}
    out.update({n: b.detach().clone() for n, b in model.named_buffers()})
    return out


def held_buffers(oracle: Oracle, model: nn.Module) -> dict[str, torch.Tensor]:
    held = oracle.held(model)
    return {f"{n}.{b}" if n else b: t.detach().clone() for n, m in model.named_modules() if n in held
            for b, t in m.named_buffers(recurse=False)}


def frozen_params(oracle: Oracle, model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if n in oracle.frozen}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def check_invariants(oracle: Oracle, model: Model, plain_keys: list[str]) -> None:
    held = oracle.held(model)
    # B1: requires_grad and gradients
    for name, p in model.named_parameters():
        assert p.requires_grad is (name not in oracle.frozen), name
        if name in oracle.frozen:
            assert p.grad is None, name
    # B5: every module not held is in plain PyTorch's mode
    for name, m in model.named_modules():
        if name not in held:
            assert m.training is oracle.mode[name], name
    # frozen_groups (API: every parameter frozen; without parameters, every module frozen)
    expected = []
    for g, specs in oracle.groups.items():
        mods, prms = oracle.members(model, specs)
        if (all(p in oracle.frozen for p in prms) if prms else all(m in oracle.marked for m in mods)):
            expected.append(g)
    assert model.frozen_groups == tuple(expected)
    # B2, B3: a forward in the current modes; held modules compute as in eval, their buffers stay
    before = held_buffers(oracle, model)
    inputs: dict[str, torch.Tensor] = {}
    outputs: dict[str, torch.Tensor] = {}
    by_id = {id(m): n for n, m in model.named_modules()}
    reference = copy.deepcopy(model)  # before the forward: the held modules' statistics as they are
    nn.Module.train(reference, False)  # plain eval everywhere

    def capture(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
        inputs.setdefault(by_id[id(module)], args[0])  # a shared module: its first call
        outputs.setdefault(by_id[id(module)], out)

    hooks = [m.register_forward_hook(capture) for n, m in model.named_modules() if n in held]
    try:
        with torch.no_grad():
            model(X)
    finally:
        for h in hooks:
            h.remove()
    assert same(before, held_buffers(oracle, model))
    for name in outputs:
        assert not model.get_submodule(name).training, name  # after its forward, a held module is in eval
        with torch.no_grad():
            assert torch.equal(outputs[name], reference.get_submodule(name)(inputs[name])), name
    # B6: the plain model's keys, loading both ways
    assert list(model.state_dict()) == plain_keys


# -- the test --------------------------------------------------------------------------------------------------------

OPS = ["register", "freeze", "unfreeze", "train", "eval", "inner_train", "step", "deepcopy", "state_dict",
       "save_load", "freeze_state_json"]


@given(tree=trees, data=st.data())
def test_invariants_hold_after_every_step(tree, data):
    torch.manual_seed(0)
    body = build(tree, {})
    plain = Plain(copy.deepcopy(body))
    plain_keys = list(plain.state_dict())
    model = Model(body)
    model.head = copy.deepcopy(plain.head)
    pristine = copy.deepcopy(model)  # no groups, nothing frozen
    oracle = Oracle(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
    spec_names = [n for n, _ in model.named_modules() if n] + [n for n, _ in model.named_parameters()]

    for op in data.draw(st.lists(st.sampled_from(OPS), min_size=1, max_size=10), label="ops"):
        groups = list(oracle.groups)
        if op == "register":
            specs = data.draw(st.lists(st.sampled_from(spec_names), min_size=1, max_size=2, unique=True),
                              label="specs")
            name = f"g{len(groups)}"
            model.register_freeze_group(name, *specs)
            oracle.groups[name] = specs
        elif op in ("freeze", "unfreeze"):
            chosen = data.draw(st.lists(st.sampled_from(groups), max_size=2, unique=True) if groups else st.just([]),
                               label="groups")
            if op == "freeze":
                train_bn = data.draw(st.booleans(), label="train_bn")
                model.freeze(*chosen, train_bn=train_bn)
                oracle.freeze(model, chosen, train_bn)
            else:
                model.unfreeze(*chosen)
                oracle.unfreeze(model, chosen)
        elif op in ("train", "eval"):
            model.train(op == "train")
            oracle.train(model, "", op == "train")
        elif op == "inner_train":
            name = data.draw(st.sampled_from([n for n, _ in model.named_modules() if n]), label="inner")
            mode = data.draw(st.booleans(), label="mode")
            model.get_submodule(name).train(mode)
            oracle.train(model, name, mode)
        elif op == "step":
            set_to_none = data.draw(st.booleans(), label="set_to_none")
            frozen_before, held_before = frozen_params(oracle, model), held_buffers(oracle, model)
            opt.zero_grad(set_to_none=set_to_none)
            loss = model(X).square().mean()
            if loss.requires_grad:
                loss.backward()
            opt.step()
            assert same(frozen_params(oracle, model), frozen_before)
            assert same(held_buffers(oracle, model), held_before)
        elif op in ("deepcopy", "save_load"):
            if op == "deepcopy":
                other = copy.deepcopy(model)
            else:
                buffer = io.BytesIO()
                torch.save(model, buffer)
                other = torch.load(io.BytesIO(buffer.getvalue()), weights_only=False)
            assert other.freeze_state() == model.freeze_state() and same(tensors(other), tensors(model))
            assert other.freeze_group_names == model.freeze_group_names
            model = other
            opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
        elif op == "state_dict":
            saved = {k: v.clone() for k, v in model.state_dict().items()}
            state_before = model.freeze_state()
            plain.load_state_dict(saved, strict=True)
            model.load_state_dict(plain.state_dict(), strict=True)
            assert same(dict(model.state_dict()), saved) and model.freeze_state() == state_before
        elif op == "freeze_state_json":
            state = json.loads(json.dumps(model.freeze_state()))
            fresh = copy.deepcopy(pristine)
            fresh.load_state_dict(model.state_dict(), strict=True)
            fresh_oracle = Oracle(fresh)
            fresh.load_freeze_state(state)
            for name, specs in oracle.groups.items():
                fresh.register_freeze_group(name, *specs)
            fresh_oracle.groups = dict(oracle.groups)
            fresh_oracle._apply(fresh, lambda: (fresh_oracle.frozen.update(oracle.frozen),
                                                fresh_oracle.marked.update(oracle.marked)))
            assert fresh.freeze_state() == model.freeze_state()
            model, oracle = fresh, fresh_oracle
            opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
        check_invariants(oracle, model, plain_keys)
        assert fz.check(model).problems == [] or any(
            "training mode" in p for p in fz.check(model).problems)  # only an inner train() call may show


# -- swaps, new tensor objects, the fast path, a wrapper nested in a mixin model (issue 21) ---------------------------

# The model under test is a mixin model whose body may become a FrozenBackbone (``wrap``, with or without
# ``fast=True``), nested in it: groups of the outer model and of the inner wrapper freeze and unfreeze parts of
# the same body. Modules are swapped (a BatchNorm converted to SyncBatchNorm, a layer replaced with a copy of
# it, with other values), and weights loaded with ``assign=True`` (new tensor objects, other values) through the
# outer model or the inner backbone. The oracle is plain: which parameters are frozen (by the names of the plain model), and
# the value of each frozen tensor when it was frozen. After every operation: requires_grad is the oracle's;
# every parameter frozen since it was frozen, and every buffer of a BatchNorm frozen since, is bit-identical;
# and a forward (in the current modes, with the same seed) equals the plain model's with the same weights and
# the modes the forward ran in.

WIDE_OPS = ["freeze", "unfreeze", "wrap", "inner_freeze", "inner_unfreeze", "swap", "load_assign",
            "load_assign_inner", "train", "eval", "inner_train", "step"]


class Outer(fz.Freezable, Plain):
    """The mixin model whose body may become a FrozenBackbone."""


def plain_name(name: str) -> str:
    """A name of the model under test as the plain model has it (no ``backbone.`` of a nested wrapper)."""
    if name == "body.backbone" or name.startswith("body.backbone."):
        return "body" + name[len("body.backbone"):]
    return name


class Frozen:
    """The oracle: which parameters are frozen, and what every frozen tensor held when it was frozen."""

    def __init__(self) -> None:
        self.names: set[str] = set()  # frozen parameters, by canonical plain name
        self.values: dict[str, torch.Tensor] = {}  # frozen since: parameters, and buffers of frozen BatchNorms

    @staticmethod
    def canonical(model: nn.Module) -> dict[int, str]:
        return {id(p): plain_name(n) for n, p in model.named_parameters()}

    def set(self, model: nn.Module, module: nn.Module, frozen: bool) -> None:
        canon = self.canonical(model)
        names = {canon[id(p)] for p in module.parameters()}
        self.names = self.names | names if frozen else self.names - names

    def remember(self, model: nn.Module) -> None:
        """Records the value of each tensor frozen now and not before; forgets those no longer frozen."""
        tensors = {plain_name(n): p for n, p in model.named_parameters()}
        canon = self.canonical(model)
        for name, m in model.named_modules():
            params = [canon[id(p)] for p in m.parameters(recurse=False)]
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and params and set(params) <= self.names:
                tensors.update({plain_name(f"{name}.{b}"): t for b, t in m.named_buffers(recurse=False)})
        frozen = {n for n in tensors if n in self.names or (n.rpartition(".")[2] in ("running_mean", "running_var",
                                                                                     "num_batches_tracked")
                                                            and n in tensors and self._bn_frozen(n))}
        self.values = {n: self.values.get(n, None) if n in self.values else tensors[n].detach().clone()
                       for n in frozen}

    def renew(self, model: nn.Module) -> None:
        """After new values were loaded on purpose: frozen since now, with these values."""
        tensors = {plain_name(n): t for n, t in [*model.named_parameters(), *model.named_buffers()]}
        self.values = {n: tensors[n].detach().clone() for n in self.values}

    def _bn_frozen(self, buffer: str) -> bool:
        owner = buffer.rpartition(".")[0]
        return f"{owner}.weight" in self.names


def swappable(model: nn.Module) -> list[str]:
    """Leaves of the body that appear once (a swap at one name of a shared module would split it)."""
    counts: dict[int, int] = {}
    for _, m in model.named_modules(remove_duplicate=False):
        counts[id(m)] = counts.get(id(m), 0) + 1
    return [n for n, m in model.named_modules() if n.startswith("body.") and not m._modules and counts[id(m)] == 1
            and isinstance(m, (nn.Linear, nn.Conv1d, nn.modules.batchnorm._BatchNorm, nn.Dropout))]


def other_values(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """New tensor objects with other values (x * 0.9 + 0.1: a running variance stays positive, nothing grows)."""
    return {k: v * 0.9 + 0.1 if v.is_floating_point() else v.clone() for k, v in tensors.items()}


def check_wide(model: Outer, plain: Plain, frozen: Frozen, fast: bool) -> None:
    canon = Frozen.canonical(model)
    for name, p in model.named_parameters():
        assert p.requires_grad is (canon[id(p)] not in frozen.names), name
    now = {plain_name(n): t for n, t in [*model.named_parameters(), *model.named_buffers()]}
    for name, value in frozen.values.items():
        assert torch.equal(now[name], value), f"frozen tensor {name} changed"
    # a forward in the current modes against the plain model with the same weights and the modes it ran in
    torch.manual_seed(7)
    with torch.no_grad():
        out = model(X)
    # a wrapper's, then its backbone's; a held module computes in eval (through the fast path: its copy does)
    modes = {plain_name(n): m.training and not is_held(m) for n, m in model.named_modules()}
    plain.load_state_dict(model.state_dict(), strict=True)
    for name, m in plain.named_modules():
        m.training = modes[name]
    torch.manual_seed(7)
    with torch.no_grad():
        expected = plain(X)
    if fast:
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    else:
        assert torch.equal(out, expected)
    problems = fz.check(model).problems
    assert all("training mode" in p for p in problems), problems  # only an inner train() call (or a swap) may show


@given(tree=trees, data=st.data())
def test_frozen_tensors_and_outputs_hold_through_swaps_assign_loads_fast_paths_and_nesting(tree, data):
    torch.manual_seed(0)
    body = build(tree, {})
    plain = Plain(copy.deepcopy(body))
    model = Outer(body)
    model.head = copy.deepcopy(plain.head)
    frozen = Frozen()
    generation = 0  # outer groups registered before a wrap name what the wrap moved under body.backbone
    groups: dict[str, int] = {}
    inner_groups: list[str] = []
    fast = False

    def optimizer() -> torch.optim.Optimizer:
        return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=0.1)

    opt = optimizer()
    for _ in range(data.draw(st.integers(4, 16), label="steps")):
        wrapped = isinstance(model.body, fz.FrozenBackbone)
        valid = [op for op in WIDE_OPS if (op != "wrap" or not wrapped) and (wrapped or not op.startswith(
            ("inner_freeze", "inner_unfreeze", "load_assign_inner"))) and (op != "swap" or swappable(model))]
        op = data.draw(st.sampled_from(valid), label="op")
        names = [n for n, _ in model.named_modules() if n]
        if op in ("freeze", "unfreeze"):
            current = [g for g, gen in groups.items() if gen == generation]
            choice = data.draw(st.sampled_from(["(whole)", "(new)", *current]), label="group")
            if choice == "(new)":
                choice = f"g{len(groups)}"
                model.register_freeze_group(choice, data.draw(st.sampled_from(names), label="spec"))
                groups[choice] = generation
            target = model if choice == "(whole)" else [model.get_submodule(n) for n in model.freeze_group(choice).modules]
            (model.freeze if op == "freeze" else model.unfreeze)(*([] if choice == "(whole)" else [choice]))
            for m in [target] if choice == "(whole)" else target:
                frozen.set(model, m, op == "freeze")
        elif op == "wrap":
            inner = [n for n, _ in model.body.named_modules() if n]
            trainable = data.draw(st.lists(st.sampled_from(inner), max_size=2, unique=True) if inner
                                  else st.just([]), label="trainable")
            fast = data.draw(st.booleans(), label="fast")
            backbone = model.body
            model.body = fz.FrozenBackbone(backbone, trainable=trainable, fast=fast)
            frozen.set(model, model.body, True)
            for spec in trainable:
                frozen.set(model, backbone.get_submodule(spec), False)
            generation += 1
            opt = optimizer()
        elif op in ("inner_freeze", "inner_unfreeze"):
            inner = [n for n, _ in model.body.backbone.named_modules() if n]
            spec = data.draw(st.sampled_from(["(whole)", *inner]), label="inner_spec")
            chosen = []
            if spec != "(whole)":
                chosen = [f"i{len(inner_groups)}"]
                model.body.register_freeze_group(chosen[0], spec)
                inner_groups.append(chosen[0])
            (model.body.freeze if op == "inner_freeze" else model.body.unfreeze)(*chosen)
            frozen.set(model, model.body.backbone.get_submodule("" if spec == "(whole)" else spec),
                       op == "inner_freeze")
        elif op == "swap":
            name = data.draw(st.sampled_from(swappable(model)), label="swapped")
            parent, _, child = name.rpartition(".")
            old = model.get_submodule(name)
            sync = isinstance(old, nn.BatchNorm1d) and data.draw(st.booleans(), label="sync_batchnorm")
            if sync:  # the same Parameter and buffer objects in a new module
                new = nn.SyncBatchNorm.convert_sync_batchnorm(old)
            else:  # a copy with other values
                new = copy.deepcopy(old)
                new.load_state_dict(other_values(new.state_dict()))
            setattr(model.get_submodule(parent), child, new)
            frozen.renew(model)
            opt = optimizer()
        elif op == "load_assign":
            model.load_state_dict(other_values(model.state_dict()), strict=True, assign=True)
            frozen.renew(model)
            opt = optimizer()
        elif op == "load_assign_inner":
            backbone = model.body.backbone
            backbone.load_state_dict(other_values(backbone.state_dict()), assign=True)
            frozen.renew(model)
            opt = optimizer()
        elif op in ("train", "eval"):
            model.train(op == "train")
            canon = Frozen.canonical(model)
            for name, m in model.named_modules():  # B5: whatever holds a trainable parameter follows train()
                if any(canon[id(p)] not in frozen.names for p in m.parameters()):
                    assert m.training is (op == "train"), name
        elif op == "inner_train":
            model.get_submodule(data.draw(st.sampled_from(names), label="inner")).train(
                data.draw(st.booleans(), label="mode"))
        elif op == "step":
            opt.zero_grad(set_to_none=data.draw(st.booleans(), label="set_to_none"))
            loss = model(X).tanh().mean()  # bounded: 16 steps never overflow
            if loss.requires_grad:
                loss.backward()
            opt.step()
        with open("/tmp/wt21_ops.log", "a") as f:
            f.write(f"{op} {wrapped} {fast}\n")
        frozen.remember(model)
        check_wide(model, plain, frozen, fast)
