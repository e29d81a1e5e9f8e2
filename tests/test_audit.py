"""fz.check: every problem it reports, on Freezables, plain modules, optimizers and DDP."""

from __future__ import annotations

import socket
import warnings

import pytest
import torch
import torch.distributed as dist
from _two_procs import outcome
from conftest import Net, full_state
from torch import nn

import freezable as fz


def steps(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, n: int = 2) -> None:
    for _ in range(n):
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()


def test_a_model_trained_as_intended_is_ok(net, images):
    net.freeze("features", guard=True).train()
    opt = torch.optim.AdamW(net.trainable_parameters(), lr=0.1)
    steps(net, opt, images)
    report = fz.check(net, opt)
    assert report.ok and report.problems == [] and bool(report)
    assert [name for name, _ in report.rows] == ["modes", "gradients", "optimizer", "drift"]
    assert "ok: nothing defeats freezing" in str(report)
    assert fz.check(net, opt, strict=True) == report


def test_check_changes_nothing(net, images):
    net.freeze("features", guard=True).train()
    net.features.train()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    before = full_state(net)
    state_before = {k: {n: v.clone() for n, v in s.items() if torch.is_tensor(v)} for k, s in opt.state.items()}
    assert not fz.check(net, opt).ok
    assert full_state(net) == before
    assert {k: {n: v.clone() for n, v in s.items() if torch.is_tensor(v)} for k, s in opt.state.items()} == state_before


# -- modes --------------------------------------------------------------------------------------------------------


def test_inner_train_call_on_a_frozen_part_is_reported_until_the_next_forward(net, images):
    net.freeze("features").train()
    net.features.train()
    problems = fz.check(net).problems
    assert len(problems) == 1  # the top-most module only
    assert problems[0].startswith("frozen module 'features' (Sequential) is in training mode with 2 norm layer(s) "
                                  "inside it: ")
    net(images)
    assert fz.check(net).ok


def test_a_single_norm_layer_in_training_mode_is_named(net):
    net.freeze("features").train()
    net.features[5].train()
    (problem,) = fz.check(net).problems
    assert problem.startswith("frozen module 'features.5' (BatchNorm2d) is in training mode: .train() was called")


def test_plain_module_norm_with_frozen_parameters_in_training_mode():
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    for p in model[:2].parameters():
        p.requires_grad_(False)
    (problem,) = fz.check(model.train()).problems
    assert problem.startswith("norm layer '1' (BatchNorm1d) has frozen parameters but is in training mode")
    assert fz.check(model.eval()).ok
    model[1].train()
    model[1].weight.requires_grad_(True)  # trains: its statistics are meant to update
    assert fz.check(model).ok


def test_train_bn_norms_in_training_mode_are_fine(net):
    net.freeze("features", train_bn=True).train()
    assert net.features[1].training and fz.check(net).ok


def test_norm_eval_layers_whose_parameters_train_are_fine(net, images):
    net.set_norm_eval(True).train()
    opt = torch.optim.SGD(net.trainable_parameters(), lr=0.1)
    steps(net, opt, images)
    assert net.features[1].weight.requires_grad and fz.check(net, opt).ok


def test_norm_eval_layer_in_training_mode_is_reported_until_the_next_forward(net, images):
    net.set_norm_eval(True, "features").train()
    net.features[5].train()  # a direct call on the layer
    (problem,) = fz.check(net).problems
    assert problem.startswith("norm layer 'features.5' (BatchNorm2d) is under norm_eval but in training mode: "
                              ".train() was called on it directly")
    net(images)
    assert fz.check(net).ok


# -- gradients -------------------------------------------------------------------------------------------------------


def test_frozen_parameter_with_a_gradient(net):
    net.freeze("features")
    net.features[0].weight.grad = torch.zeros_like(net.features[0].weight)
    (problem,) = fz.check(net).problems
    assert problem.startswith("frozen parameter 'features.0.weight' holds a gradient")


def test_plain_module_frozen_parameter_with_a_gradient():
    model = nn.Linear(2, 2)
    model.weight.grad = torch.ones(2, 2)
    model.weight.requires_grad_(False)
    assert fz.check(model).problems == [
        "frozen parameter 'weight' holds a gradient (.grad is a tensor): an optimizer that holds it moves it "
        "(weight decay, momentum); set its .grad to None"
    ]


# -- optimizer -------------------------------------------------------------------------------------------------------


def test_frozen_parameter_in_the_optimizer_with_a_gradient_and_weight_decay(net, images):
    opt = torch.optim.SGD(net.parameters(), lr=0.1, weight_decay=0.01)
    net.freeze("features")
    bias = net.features[0].bias
    bias.grad = torch.zeros_like(bias)  # e.g. a gradient set by hand, or restored
    report = fz.check(net, opt)
    assert ("1 frozen parameter(s) are in the optimizer with a gradient, so step() moves them (its gradient, "
            "weight decay 0.01): 'features.0.bias'") in report.problems[1]
    before = bias.detach().clone()
    opt.step()
    assert not torch.equal(before, bias)  # what the report warned about is real


def test_frozen_parameter_with_momentum_state(net, images):
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    steps(net.train(), opt, images)
    net.freeze("features")
    report = fz.check(net, opt)
    (problem,) = report.problems
    assert problem.startswith("8 frozen parameter(s) have optimizer state (momentum_buffer) that moves them as soon "
                              "as they get a gradient, and that a later unfreeze resumes from: 'features.0.weight', ")
    for p in net.features.parameters():
        opt.state.pop(p, None)
    assert fz.check(net, opt).ok  # frozen, gradient-free and stateless: torch skips them


def test_adam_state_is_reported_by_key(net, images):
    opt = torch.optim.Adam(net.parameters(), lr=0.1)
    steps(net.train(), opt, images, n=1)
    net.freeze("classifier")
    problems = fz.check(net, opt).problems
    assert problems == ["2 frozen parameter(s) have optimizer state (exp_avg, exp_avg_sq) that moves them as soon as "
                        "they get a gradient, and that a later unfreeze resumes from: 'classifier.1.weight', "
                        "'classifier.1.bias'; release it: fz.release_optimizer_state(optimizer)"]


def test_trainable_parameters_missing_from_the_optimizer(net):
    net.freeze("features")
    opt = torch.optim.SGD([net.classifier[1].weight], lr=0.1)
    (problem,) = fz.check(net, opt).problems
    assert problem.startswith("1 trainable parameter(s) are not in the optimizer: they get gradients but never "
                              "move: 'classifier.1.bias'")


def test_many_missing_parameters_are_counted_and_the_list_is_cut():
    model = nn.Sequential(*[nn.Linear(2, 2) for _ in range(7)])
    opt = torch.optim.SGD([model[0].weight], lr=0.1)
    (problem,) = fz.check(model, opt).problems
    assert problem.startswith("13 trainable parameter(s) are not in the optimizer: they get gradients but never "
                              "move: '0.bias', '1.weight',")
    assert "'5.weight' and 3 more; freeze them" in problem


def _optimizer_row(report: fz.CheckReport) -> str:
    return next(line for line in str(report).splitlines() if line.startswith("optimizer "))


def test_the_optimizer_row_says_what_it_holds(net, images):
    """Issue 21: an optimizer holding frozen parameters is harmless while they get no gradient; the row says so."""
    net.freeze("features").train()
    trainable = torch.optim.SGD(net.trainable_parameters(), lr=0.1, momentum=0.9)
    everything = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    for opt in (trainable, everything):
        steps(net, opt, images)
    assert fz.check(net, trainable).ok and fz.check(net, everything).ok
    frozen = sum(1 for p in net.parameters() if not p.requires_grad)
    assert "exactly the trainable" not in str(fz.check(net, everything))
    assert _optimizer_row(fz.check(net, trainable)).endswith(
        "optimizer holds every trainable parameter, moves no frozen one  ok")
    assert _optimizer_row(fz.check(net, everything)).endswith(
        f"ok: it also holds {frozen} frozen parameter(s), harmless while they get no gradient")
    net.features[0].weight.grad = torch.ones_like(net.features[0].weight)  # now one moves: a problem, not a note
    assert _optimizer_row(fz.check(net, everything)).endswith("1 problem(s)")


def test_a_parameter_in_the_optimizer_twice(net):
    net.freeze("features")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns about duplicates in one group
        opt = torch.optim.SGD([net.classifier[1].weight, net.classifier[1].weight, net.classifier[1].bias], lr=0.1)
    (problem,) = fz.check(net, opt).problems
    assert problem.startswith("parameter 'classifier.1.weight' is in the optimizer 2 times (param groups [0, 0])")


def test_a_parameter_in_two_param_groups(net):
    net.freeze("features")
    opt = torch.optim.SGD(net.trainable_parameters(), lr=0.1)
    opt.param_groups.append({**opt.param_groups[0], "params": [net.classifier[1].bias]})  # past torch's own check
    (problem,) = fz.check(net, opt).problems
    assert "'classifier.1.bias' is in the optimizer 2 times (param groups [0, 1])" in problem


# -- report, strict ---------------------------------------------------------------------------------------------------


def test_strict_raises_listing_every_problem(net):
    net.freeze("features").train()
    net.features.train()
    net.features[0].weight.grad = torch.ones_like(net.features[0].weight)
    with pytest.raises(fz.FreezableError, match=r"(?s)fz.check found 2 problem\(s\):\n- frozen module 'features'"
                                               r".*\n- frozen parameter 'features.0.weight' holds a gradient"):
        fz.check(net, strict=True)


def test_report_prints_a_table(net):
    net.freeze("features").train()
    net.features[1].train()
    lines = str(fz.check(net)).splitlines()
    assert lines[0].split() == ["check", "expects", "result"]
    assert lines[2].split()[0] == "modes" and lines[2].endswith("1 problem(s)")
    assert lines[3].endswith("ok")
    assert lines[4].startswith("optimizer") and lines[4].endswith("skipped: no optimizer given")
    assert lines[-2] == "1 problem(s):" and lines[-1].startswith("- frozen module 'features.1'")


def test_checks_freezables_at_any_depth():
    torch.manual_seed(0)
    inner = Net().freeze("features", guard=True)
    model = nn.Sequential(nn.ModuleDict({"net": inner}), nn.Linear(3, 3))
    inner.features[4].weight.data[0, 0, 0, 0] += 1
    inner.features[1].train()
    problems = fz.check(model).problems
    assert problems[0].startswith("frozen module '0.net.features.1' (BatchNorm2d) is in training mode")
    assert problems[1] == "frozen parameter '0.net.features.4.weight' changed since freeze(guard=True)"


# -- DDP ------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def process_group():
    """A real one-process gloo group on the CPU."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_ddp_built_after_freezing_is_ok(process_group, net, images):
    net.freeze("features")
    ddp = nn.parallel.DistributedDataParallel(net)
    opt = torch.optim.SGD(net.trainable_parameters(), lr=0.1)
    steps(ddp, opt, images, n=1)
    report = fz.check(ddp, opt)
    assert report.ok and [name for name, _ in report.rows] == ["modes", "gradients", "optimizer", "ddp", "drift"]


def test_ddp_built_before_freezing_synchronises_frozen_parameters(process_group, net):
    ddp = nn.parallel.DistributedDataParallel(net)
    net.freeze("features")
    (problem,) = fz.check(ddp).problems
    assert problem.startswith("the DDP wrapper synchronises 8 parameter(s) that are now frozen: 'features.0.weight'")
    assert "find_unused_parameters=True" in problem


def test_ddp_built_before_unfreezing_misses_trainable_parameters(process_group, net):
    net.freeze("features")
    model = nn.Sequential(nn.parallel.DistributedDataParallel(net))
    net.unfreeze("features")
    (problem,) = fz.check(model).problems
    assert problem.startswith("DDP wrapper '0' does not synchronise 8 trainable parameter(s): 'features.0.weight'")


def test_lbfgs_history_over_parameters_frozen_since_is_reported_and_real():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    x = torch.randn(16, 4)
    opt = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=4)

    def closure():
        opt.zero_grad()
        loss = model(x).square().mean()
        loss.backward()
        return loss

    opt.step(closure)
    assert fz.check(model, opt).ok
    for p in model[0].parameters():
        p.requires_grad_(False)
        p.grad = None
    (problem,) = fz.check(model, opt).problems
    assert problem.startswith("LBFGS has a curvature history over 2 parameter(s) frozen since ('0.weight', '0.bias')")
    before = model[0].weight.detach().clone()
    opt.step(closure)
    assert not torch.equal(before, model[0].weight)  # what the report warns about is real


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")
def test_two_real_processes_drift_apart_exactly_when_check_says_so():
    """The 2 gloo ranks of tests/_two_procs.py: DDP built before unfreezing leaves the stem unsynchronised."""
    right, wrong, fixed = (outcome("audit_scenarios")[0][k] for k in (
        "built_after_freezing", "plain_unfrozen_after_ddp", "freezable_unfrozen_after_ddp"))
    assert right == {"problems": [], "refused": False, "problems_after": [], "stem_agrees": True,
                     "head_agrees": True}
    message = ("the DDP wrapper does not synchronise 4 trainable parameter(s): "
               "'stem.0.weight', 'stem.0.bias', 'stem.1.weight'")
    assert wrong["problems"][0].startswith(message) and wrong["problems_after"][0].startswith(message)
    assert wrong["stem_agrees"] is False and wrong["head_agrees"] is True
    # a Freezable refuses to train out of sync, and fz.rewrap_ddp makes it right
    assert fixed["problems"][0].startswith(message) and fixed["refused"] is True
    assert fixed["problems_after"] == [] and fixed["stem_agrees"] is True and fixed["head_agrees"] is True
