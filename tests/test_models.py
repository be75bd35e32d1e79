"""Models: exact counts, the ε gate, forward/backward for every registered architecture, exact pruning."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from resnet_bench import main
from suite.errors import UserError
from suite.models import (
    ARCHITECTURES,
    ShortcutOnly,
    branch_excess,
    build_model,
    check_image_size,
    count_flops,
    count_params,
    epsilon_gate,
    load_model,
    prune,
    purge_closest_to_identity,
    rebuild_without,
    split_outputs,
)
from suite.models.probe import BlockProbe
from suite.models.resnet import branch_end
from suite.models.stochastic import survival_probabilities
from suite.vocab import BLOCKS

# torchvision's published parameter counts for its V1.5 ResNets.
TORCHVISION_PARAMS = {"resnet50": 25_557_032, "resnet101": 44_549_160, "resnet152": 60_192_808}
# The pre-activation networks, counted by hand. The convolutions and the classifier are the same; the BNs
# differ. A V1.5 block has BNs of p, p and 4p channels, a stage's projection one of 4p; a pre-activation block
# has BNs of p and p plus one on its input (none for stage 1's first block, 2p for the other stages' first,
# 4p for every later block), the projections none, and the network one final BN of 2,048. Per stage
# (p = 64, 128, 256, 512) that is 1,024 + 1,536 + 3,072 + 6,144 = 11,776 parameters fewer, less the final
# BN's 4,096: 7,680 fewer at every depth (a later block costs 12p in both).
PREACT_PARAMS = {depth: n - 7_680 for depth, n in TORCHVISION_PARAMS.items()}


@pytest.mark.parametrize("arch", sorted(TORCHVISION_PARAMS))
def test_baseline_parameter_counts_are_torchvisions(arch):
    assert count_params(build_model(arch=arch)) == TORCHVISION_PARAMS[arch]


@pytest.mark.parametrize("depth", sorted(TORCHVISION_PARAMS))
def test_eps_variant_differs_only_by_the_side_head(depth):
    eps = build_model(arch=f"eps_{depth}", epsilon=0.1)
    side = count_params(eps.side)
    assert count_params(eps) - side == TORCHVISION_PARAMS[depth]
    # BN(C) + FC(C → 1000) after the middle block; for ResNet-50 that is layer3's first block (C = 1024).
    c = eps.side.fc.in_features
    assert side == 2 * c + c * 1000 + 1000


def test_resnet50_flops_match_torchvision_published_gmacs():
    # torchvision publishes 4.089 GMACs for ResNet-50 at 224 px; torch's counter reports 2 FLOPs per MAC.
    flops = count_flops(build_model(arch="resnet50"), 224)
    assert flops == pytest.approx(2 * 4.089e9, rel=0.01)


@pytest.mark.parametrize("block", BLOCKS)
@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_every_architecture_trains_a_step_without_nan(name, block):
    gated = ARCHITECTURES[name].gated
    model = build_model(
        arch=name, epsilon=0.05 if gated else None, width=4, num_classes=5, small_stem=True, block=block
    )
    x = torch.randn(4, 3, 16, 16)
    logits, side = split_outputs(model(x))
    assert logits.shape == (4, 5)
    assert (side is not None) == gated
    loss = logits.logsumexp(1).mean() + (0 if side is None else 0.1 * side.logsumexp(1).mean())
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    model.eval()
    assert model(x).shape == (4, 5)  # side head is training-only


@settings(max_examples=200, deadline=None)
@given(
    shape=st.lists(st.integers(1, 5), min_size=1, max_size=4),
    epsilon=st.floats(0, 10, allow_nan=False),
    seed=st.integers(0, 2**31 - 1),
    scale=st.floats(1e-3, 1e3),
)
def test_epsilon_gate_is_exactly_zero_or_one(shape, epsilon, seed, scale):
    f = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale
    expected = 0.0 if f.abs().max() <= epsilon else 1.0
    assert epsilon_gate(f, epsilon).item() == expected


@settings(max_examples=200, deadline=None)
@given(
    shape=st.lists(st.integers(1, 6), min_size=1, max_size=4),
    epsilon=st.floats(0, 4, allow_nan=False),
    seed=st.integers(0, 2**31 - 1),
    scale=st.floats(1e-3, 1e2),
    dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float64]),
)
def test_branch_excess_is_the_papers_sum_of_relus_to_the_bit(shape, epsilon, seed, scale, dtype):
    f = (torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale).to(
        dtype
    )
    papers = (torch.relu(f - epsilon) + torch.relu(-f - epsilon)).amax().float()
    assert torch.equal(branch_excess(f, epsilon), papers)


def test_epsilon_gate_boundary_and_no_gradient():
    f = torch.tensor([[0.5, -0.5], [0.25, 0.0]], requires_grad=True)
    assert epsilon_gate(f, 0.5).item() == 0.0  # |F| = ε exactly is inside the band
    assert epsilon_gate(f, torch.nextafter(torch.tensor(0.5), torch.tensor(0.0)).item()).item() == 1.0
    t = epsilon_gate(f, 0.1)
    assert not t.requires_grad
    (t * f).sum().backward()
    assert torch.equal(f.grad, torch.ones_like(f))  # the branch's gradient passes T·F; none reaches T


def test_the_pre_activation_network_is_the_official_codes():
    torch.manual_seed(0)
    model = build_model(
        arch="eps_resnet50", epsilon=0.5, width=4, num_classes=3, small_stem=True, block="preact"
    ).eval()
    # The BN-ReLU before each block: none after the stem, shared with the projection at a stage's start.
    modes = [b.preact for _, _, b in model.full_blocks()]
    assert (
        modes
        == ["none", "branch", "branch", "both", *["branch"] * 3, "both", *["branch"] * 5, "both"]
        + ["branch"] * 2
    )
    assert [type(m) for m in model.layer2[0].downsample] == [torch.nn.Conv2d]  # no BN on the projection
    assert not hasattr(model.layer1[1], "bn3") and hasattr(model, "final_bn")
    # The gate reads the last convolution's raw output, and no ReLU follows the addition.
    seen = {}
    block = model.layer1[1]
    block.conv3.register_forward_hook(lambda m, i, o: seen.update(f=o))
    block.register_forward_hook(lambda m, i, o: seen.update(out=o))
    with torch.no_grad():
        model(torch.randn(2, 3, 16, 16))
    assert bool(block.gated_off) == (seen["f"].abs().max() <= 0.5)
    assert (seen["out"] < 0).any()


def _force_off(model, blocks):
    """Zero the end of the chosen blocks' branch (the last BN, or a pre-activation block's last convolution),
    so their branch output is exactly 0 ≤ ε."""
    with torch.no_grad():
        for s, j in blocks:
            end = branch_end(model.stages[s][j])
            end.weight.zero_()
            if end.bias is not None:
                end.bias.zero_()


def _calibrated(model, x):
    """Run a few training batches so BN running statistics are not the trivial initial ones."""
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(x + 0.1 * torch.randn_like(x))
    return model.eval()


@pytest.mark.parametrize("block", BLOCKS)
@pytest.mark.parametrize("depth", ["resnet50", "resnet101"])
def test_pruning_forced_blocks_keeps_logits_and_recounts(depth, block, tmp_path):
    torch.manual_seed(0)
    model = build_model(
        arch=f"eps_{depth}", epsilon=1e-3, width=8, num_classes=7, small_stem=True, block=block
    )
    forced = [(0, 1), (1, 0), (2, 2), (3, 0)]  # (1, 0) and (3, 0) are stage-first (downsampling) blocks
    _force_off(model, forced)
    x = torch.randn(6, 3, 32, 32)
    _calibrated(model, x)
    data = [(x[:3], None), (x[3:], None)]
    with torch.no_grad():
        before = model(x)
    result = prune(model, data)
    assert sorted(result.removed) == sorted(forced)
    pruned = result.model.eval()
    with torch.no_grad():
        after = pruned(x)
    assert torch.allclose(after, before, rtol=1e-5, atol=1e-6)
    assert (after - before).abs().max() / before.abs().max() <= 1e-5
    assert isinstance(pruned.layer2[0], ShortcutOnly) and isinstance(pruned.layer4[0], ShortcutOnly)
    assert sum(len(k) for k in pruned.arch.kept_blocks()) == sum(model.arch.layers) - len(forced)

    # The recorded count is the count of the model that exists: recount from the modules, compare to
    # the unpruned count minus exactly the removed blocks' (and side head's) parameters.
    # A stage-first block leaves its projection (and a pre-activation one its input's BN) behind.
    def left_behind(block) -> int:
        return count_params(block.downsample) + (count_params(block.bn0) if hasattr(block, "bn0") else 0)

    removed_params = sum(
        count_params(model.stages[s][j]) - (left_behind(model.stages[s][j]) if j == 0 else 0)
        for s, j in forced
    )
    assert count_params(pruned) == count_params(model) - count_params(model.side) - removed_params
    assert count_flops(pruned, 32) < count_flops(model, 32)
    # Save + load with weights_only=True rebuilds the same network.
    path = tmp_path / "pruned.pt"
    from suite.models import save_model

    save_model(pruned, path)
    loaded = load_model(path).eval()
    assert count_params(loaded) == count_params(pruned)
    with torch.no_grad():
        assert torch.equal(loaded(x), after)


@pytest.mark.parametrize("block", BLOCKS)
def test_a_bf16_network_prunes_to_a_bf16_network(block):
    torch.manual_seed(0)
    model = build_model(
        arch="eps_resnet50", epsilon=1e-3, width=8, num_classes=7, small_stem=True, block=block
    )
    _force_off(model, [(0, 1)])
    model = _calibrated(model, torch.randn(6, 3, 32, 32)).to(torch.bfloat16)
    pruned = rebuild_without(model, [(0, 1)]).eval()
    assert {p.dtype for p in pruned.parameters()} == {torch.bfloat16}
    x = torch.randn(2, 3, 32, 32, dtype=torch.bfloat16)
    with torch.no_grad():
        assert torch.equal(pruned(x), model(x))


@pytest.mark.parametrize("block", BLOCKS)
def test_posthoc_purge_removes_k_closest_blocks(block):
    torch.manual_seed(0)
    model = build_model(arch="resnet50", width=8, num_classes=5, small_stem=True, block=block)
    _force_off(model, [(2, 3)])  # a block whose branch is exactly 0 is the closest to the identity
    x = torch.randn(4, 3, 32, 32)
    _calibrated(model, x)
    result = purge_closest_to_identity(model, [(x, None)], k=3)
    assert len(result.removed) == 3 and (2, 3) in result.removed
    assert result.scores[(2, 3)] == 0.0
    assert min(result.scores[b] for b in result.scores if b not in result.removed) >= max(
        result.scores[b] for b in result.removed
    )
    assert result.model(x).shape == (4, 5)
    assert count_params(result.model) < count_params(model)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"arch": "resnet18"}, "unknown architecture 'resnet18'"),
        ({"arch": "eps_resnet50", "epsilon": -0.1}, "epsilon must be ≥ 0"),
        ({"arch": "eps_resnet50"}, "needs epsilon"),
        ({"arch": "resnet50", "epsilon": 0.1}, "has no ε gate"),
        ({"arch": "resnet50", "width": 0}, "width must be an integer ≥ 1"),
        ({"arch": "resnet50", "num_classes": 0}, "num_classes must be an integer ≥ 1"),
    ],
)
def test_bad_model_arguments_are_one_line_errors(kwargs, fragment):
    with pytest.raises(UserError, match=fragment) as info:
        build_model(**kwargs)
    assert "\n" not in str(info.value)


def test_image_too_small_for_the_stem():
    with pytest.raises(UserError, match=r"image_size 16 is too small.*≥ 32"):
        check_image_size(16, small_stem=False)
    check_image_size(16, small_stem=True)


def test_models_cli_json(capsys):
    assert main(["models", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    rows = {(r["name"], r["block"]): r for r in listed}
    assert len(rows) == len(listed) == 2 * len(ARCHITECTURES)  # every architecture once per block
    assert set(rows) == {(name, block) for name in ARCHITECTURES for block in ("v1.5", "preact")}
    for depth, params in TORCHVISION_PARAMS.items():
        post, pre = rows[depth, "v1.5"], rows[depth, "preact"]
        assert post["params"] == params
        assert isinstance(post["flops"], int)
        assert rows[f"eps_{depth}", "v1.5"]["flops"] == post["flops"]
        assert rows[f"eps_{depth}", "preact"]["flops"] == pre["flops"]
        # Same convolutions but BN-free projections: the FLOPs (convolutions and the classifier) are equal,
        # and the parameters differ only by BN scales and shifts.
        assert pre["flops"] == post["flops"]
        assert pre["params"] == PREACT_PARAMS[depth]


@pytest.mark.parametrize("block", BLOCKS)
def test_a_plain_network_has_no_shortcut_and_no_gate(block):
    torch.manual_seed(0)
    plain = build_model(
        arch="resnet50", width=4, num_classes=3, small_stem=True, block=block, shortcuts=False
    )
    assert not plain.arch.shortcuts and all(b.downsample is None for _, _, b in plain.full_blocks())
    assert count_params(plain) < count_params(
        build_model(arch="resnet50", width=4, num_classes=3, block=block)
    )
    # With its branch zeroed a block outputs zeros, not its input: nothing bypasses it.
    _force_off(plain, [(0, 1)])
    seen = {}
    plain.layer1[1].register_forward_hook(lambda m, i, o: seen.update(out=o))
    logits = plain(torch.randn(2, 3, 16, 16))
    assert not seen["out"].any()
    logits.sum().backward()
    with pytest.raises(UserError, match="without shortcuts: the ε gate switches a block to its shortcut"):
        build_model(arch="eps_resnet50", epsilon=0.1, shortcuts=False)


def _branch_outputs(model, x):
    """F of every full block, taken directly from the module that ends its branch."""
    found = []
    handles = [
        branch_end(b).register_forward_hook(lambda m, i, o: found.append(o.detach().double()))
        for _, _, b in model.full_blocks()
    ]
    inputs = []
    handles += [
        b.register_forward_pre_hook(lambda m, a: inputs.append(a[0].double()))
        for _, _, b in model.full_blocks()
    ]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return found, inputs


@pytest.mark.parametrize("block", BLOCKS)
def test_the_block_probe_measures_each_branch_and_the_plain_networks_distance_from_the_identity(block):
    torch.manual_seed(0)
    model = build_model(
        arch="eps_resnet50", epsilon=0.5, width=4, num_classes=3, small_stem=True, block=block
    )
    _force_off(model, [(1, 2)])
    x = torch.randn(4, 3, 16, 16)
    model = _calibrated(model, x)
    with BlockProbe(model) as probe, torch.no_grad():
        model(x[:2])
        model(x[2:])
    max_abs, rel = probe.results()
    f, inputs = _branch_outputs(model, x)
    assert len(max_abs) == len(rel) == 16
    assert max_abs == pytest.approx([t.abs().max().item() for t in f], rel=1e-6)
    assert rel == pytest.approx(
        [(t.norm() / i.norm()).item() for t, i in zip(f, inputs, strict=True)], rel=1e-5
    )
    assert (
        max_abs[5] == 0.0 and rel[5] == 0.0
    )  # the forced block: layer2's third is the sixth in network order

    plain = _calibrated(
        build_model(arch="resnet50", width=4, num_classes=3, small_stem=True, block=block, shortcuts=False), x
    )
    with BlockProbe(plain) as probe, torch.no_grad():
        out = {}
        plain.layer1[1].register_forward_hook(lambda m, i, o: out.update(x=i[0], y=o))
        plain(x)
    max_abs, rel = probe.results()
    firsts = [0, 3, 7, 13]  # stage-first blocks change the shape: B(x) − x is undefined there
    assert (
        [i for i, v in enumerate(rel) if v is None]
        == firsts
        == [i for i, v in enumerate(max_abs) if v is None]
    )
    diff = (out["y"] - out["x"]).double()
    assert max_abs[1] == pytest.approx(diff.abs().max().item()) and rel[1] == pytest.approx(
        (diff.norm() / out["x"].double().norm()).item()
    )


def test_stochastic_depth_survival_follows_huangs_linear_decay_and_restore_gives_every_block_back():
    constant = survival_probabilities(16, 0.5, "constant", 0.3)
    assert constant[0] == pytest.approx(1 - 0.5 / 16) and constant[-1] == pytest.approx(0.5)
    assert survival_probabilities(16, 0.5, "restore", 0.0) == survival_probabilities(16, 0.5, "constant", 0.9)
    assert survival_probabilities(16, 0.5, "restore", 1.0) == [1.0] * 16
    assert survival_probabilities(16, 0.5, "restore", 0.5)[-1] == pytest.approx(0.75)


@pytest.mark.parametrize("block", BLOCKS)
def test_a_dropped_block_is_its_shortcut_and_at_test_time_its_branch_is_scaled(block):
    torch.manual_seed(0)
    model = build_model(
        arch="resnet50", width=4, num_classes=3, small_stem=True, block=block, stochastic_depth=True
    )
    x = torch.randn(2, 3, 16, 16)
    model = _calibrated(model, x)  # eval mode, every survival 1 so far
    target = model.layer2[0]  # a stage-first block: its shortcut is the projection
    f, shortcut = {}, {}
    branch_end(target).register_forward_hook(lambda m, i, o: f.update(out=o))
    target.downsample.register_forward_hook(lambda m, i, o: shortcut.update(out=o))
    seen = {}
    target.register_forward_hook(lambda m, i, o: seen.update(out=o))
    with torch.no_grad():
        model(x)
        full = seen["out"].clone()
        post = block == "v1.5"
        assert torch.allclose(
            full, (f["out"] + shortcut["out"]).relu() if post else f["out"] + shortcut["out"]
        )
        model.set_survival([0.25] * 16)
        model(x)  # test time: F scaled by p
        scaled = f["out"] * 0.25 + shortcut["out"]
        assert torch.allclose(seen["out"], scaled.relu() if post else scaled)
        model.set_survival([0.0] * 16)
        model.train()
        f.clear()
        model.depth_draw.take_count()  # forget _calibrated's passes
        model(x)  # training with p = 0: every block dropped, its branch never computed
        assert f == {} and model.depth_draw.take_count() == (0, 1)
        assert torch.equal(seen["out"], shortcut["out"].relu() if post else shortcut["out"])
    # Two networks reseeded alike draw alike (the ranks of one run).
    draws = []
    for _ in range(2):
        model.set_survival([0.5] * 16)
        model.depth_draw.reseed(7)
        draws.append([model.depth_draw.keep(0.5) for _ in range(50)])
    assert draws[0] == draws[1] and 10 < sum(draws[0]) < 40


@pytest.mark.parametrize("block", BLOCKS)
def test_a_plain_network_is_purged_of_the_shape_keeping_blocks_closest_to_the_identity(block):
    torch.manual_seed(0)
    plain = build_model(
        arch="resnet50", width=4, num_classes=3, small_stem=True, block=block, shortcuts=False
    )
    x = torch.randn(4, 3, 16, 16)
    plain = _calibrated(plain, x)
    result = purge_closest_to_identity(plain, [(x, None)], k=3)
    # Candidates: the 12 blocks that keep their input's shape; the stage-first ones cannot be the identity.
    assert sorted(result.scores) == [(s, j) for s, n in enumerate((3, 4, 6, 3)) for j in range(1, n)]
    assert len(result.removed) == 3 and all(j > 0 for _, j in result.removed)
    # The purged network is the plain one with those blocks replaced by the identity.
    expected = copy.deepcopy(plain)
    for s, j in result.removed:
        expected.stages[s][j] = torch.nn.Identity()
    with torch.no_grad():
        assert torch.equal(result.model.eval()(x), expected.eval()(x))
