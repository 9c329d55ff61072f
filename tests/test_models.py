import json
import math
from pathlib import Path

import pytest
import torch

from models import PRESETS, BasicBlock, Bottleneck, FlexibleCNN, FlexibleMLP, ModelConfig, build_model, count_params


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_output_shape(name):
    model = build_model(ModelConfig(name=name), (3, 32, 32), 10).eval()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize(
    "name,millions",
    [("resnet20", 0.27), ("resnet32", 0.46), ("resnet44", 0.66), ("resnet56", 0.85), ("resnet110", 1.7)],
)
def test_he_et_al_parameter_counts(name, millions):
    n = count_params(build_model(ModelConfig(name=name), (3, 32, 32), 10))
    assert round(n / 1e6, 2 if millions < 1 else 1) == millions
    # Option-A shortcuts have no parameters: the plain net has exactly as many.
    plain = build_model(ModelConfig(name=name.replace("resnet", "plain")), (3, 32, 32), 10)
    assert count_params(plain) == n


@pytest.mark.parametrize(
    "cfg",
    [
        ModelConfig(),
        ModelConfig(depth=6, residual=True, norm="batch"),
        ModelConfig(hidden_sizes=(64, 32, 32), norm="layer", activation="gelu", dropout=0.2),
        ModelConfig(hidden_sizes=(16, 16, 8), skips=((1, 0), (3, 0)), activation="tanh"),
        ModelConfig(name="FlexibleCNN", layers=(1, 1), width=8),
        ModelConfig(name="FlexibleCNN", layers=(1, 2, 1), block="bottleneck", width=4, residual=True, norm="batch"),
    ],
)
@pytest.mark.parametrize("in_shape", [(1, 28, 28), (3, 32, 32)])
def test_flexible_models_output_shape(cfg, in_shape):
    model = build_model(cfg, in_shape, 7).train()
    assert model(torch.randn(3, *in_shape)).shape == (3, 7)


def test_mlp_depth_and_width():
    model = build_model(ModelConfig(depth=5, hidden_size=33), (1, 28, 28), 10)
    assert [b.fc.out_features for b in model.blocks] == [33] * 5
    assert model.blocks[0].fc.in_features == 784


@pytest.mark.parametrize("block", [BasicBlock, Bottleneck])
def test_residual_block_with_zeroed_branch_is_identity(block):
    planes = 8
    b = block(planes * block.expansion, planes, stride=1, residual=True, norm=True).eval()
    torch.nn.init.zeros_(b.branch[-1].weight)  # last norm's scale: the branch now outputs 0
    torch.nn.init.zeros_(b.branch[-1].bias)
    x = torch.rand(2, planes * block.expansion, 6, 6)  # non-negative, as after a ReLU
    assert torch.allclose(b(x), x)


def test_plain_net_is_the_residual_net_minus_shortcuts():
    res = FlexibleCNN(3, 10, (2, 2), width=8, residual=True, norm=True)
    plain = FlexibleCNN(3, 10, (2, 2), width=8, residual=False, norm=True)
    res_names = {n for n, _ in res.named_parameters()}
    plain_names = {n for n, _ in plain.named_parameters()}
    assert plain_names < res_names
    assert all(".shortcut." in n for n in res_names - plain_names)
    assert all(b.shortcut is None for stage in plain.stages for b in stage)


def test_mlp_residual_is_the_every_block_skip_case():
    torch.manual_seed(0)
    a = FlexibleMLP(12, 3, [8, 8, 8], residual=True)
    torch.manual_seed(0)
    b = FlexibleMLP(12, 3, [8, 8, 8], skips=[(1, 0), (2, 1), (3, 2)])
    assert a.skips == b.skips == [(1, 0), (2, 1), (3, 2)]
    x = torch.randn(4, 12)
    assert torch.allclose(a(x), b(x))


def test_skips_mapping_wiring():
    """x_t = block_t(x_{t-1}) + P(x_s): checked against a manual forward pass."""
    m = FlexibleMLP(6, 2, [4, 4, 5], skips=[(2, 0), (3, 1)]).eval()
    assert set(m.proj) == {"2_0", "3_1"}  # widths differ on both: learned projections
    x = torch.randn(3, 6)
    x1 = m.blocks[0](x)
    x2 = m.blocks[1](x1) + m.proj["2_0"](x)
    x3 = m.blocks[2](x2) + m.proj["3_1"](x1)
    assert torch.allclose(m(x), m.head(x3))
    # Same widths: an identity skip, no projection.
    m2 = FlexibleMLP(6, 2, [4, 4], skips=[(2, 1)])
    assert len(m2.proj) == 0


def test_bad_skips_rejected():
    with pytest.raises(ValueError):
        FlexibleMLP(6, 2, [4, 4], skips=[(3, 0)])


def test_flexible_cnn_stage_widths_and_downsampling():
    m = FlexibleCNN(3, 10, (1, 1, 1, 1), width=4, residual=True, norm=True)
    x = torch.randn(1, 3, 32, 32)
    shapes = []
    h = m.stem(x)
    for stage in m.stages:
        h = stage(h)
        shapes.append(tuple(h.shape[1:]))
    assert shapes == [(4, 32, 32), (8, 16, 16), (16, 8, 8), (32, 4, 4)]


def test_input_dropout_zero_is_todays_model():
    """Input dropout adds no state_dict keys at any rate (old checkpoints load) and, off, changes nothing."""
    from dataclasses import asdict

    keys = [
        "blocks.0.fc.weight",
        "blocks.0.fc.bias",
        "blocks.1.fc.weight",
        "blocks.1.fc.bias",
        "head.weight",
        "head.bias",
    ]
    x = torch.randn(4, 1, 6, 6)
    outs = []
    for p in (0.0, 0.2):
        torch.manual_seed(0)
        m = build_model(ModelConfig(hidden_sizes=(8, 8), input_dropout=p), (1, 6, 6), 3)
        assert list(m.state_dict()) == keys
        outs.append(m.eval()(x))
    torch.manual_seed(0)
    today = FlexibleMLP(36, 3, [8, 8]).train()  # no input_dropout argument: the default
    assert torch.equal(today(x), outs[0]) and torch.equal(outs[0], outs[1])
    old = {k: v for k, v in asdict(ModelConfig()).items() if k != "input_dropout"}
    assert ModelConfig(**old).input_dropout == 0.0  # a checkpoint's config without the key rebuilds


def test_input_dropout_active_in_train_only():
    m = FlexibleMLP(400, 3, [8], input_dropout=0.5, skips=[(1, 0)])
    seen = []
    m.blocks[0].register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    x = torch.rand(2, 400) + 1  # no zeros of its own
    m.train()(x)
    zeroed = seen[-1] == 0
    assert 0.3 < zeroed.float().mean() < 0.7
    assert torch.allclose(seen[-1][~zeroed], 2 * x[~zeroed])  # survivors scaled by 1 / (1 - p)
    m.eval()(x)
    assert torch.equal(seen[-1], x)


def _rows(w):
    return torch.linalg.vector_norm(w.flatten(1), dim=1)


@pytest.mark.parametrize("layer", [torch.nn.Linear(5, 4), torch.nn.Conv2d(2, 4, 3)])
def test_max_norm_rescales_only_rows_above_c(layer):
    from models import max_norm_

    with torch.no_grad():
        layer.weight.copy_(layer.weight / _rows(layer.weight).view(-1, *[1] * (layer.weight.dim() - 1)))
        layer.weight[0] *= 0.5  # norm 0.5: untouched by c
        layer.weight[1] = 0  # zero row: no NaN
        layer.weight[2:] *= 3.0  # norm 3: rescaled to c
    c, before, bias = 0.577777, layer.weight.clone(), layer.bias.clone()
    max_norm_(layer, c)
    assert torch.equal(layer.weight[:2], before[:2]) and torch.equal(layer.bias, bias)
    assert torch.allclose(_rows(layer.weight[2:]), torch.full((2,), c))
    assert torch.allclose(layer.weight[2:], before[2:] * c / 3)  # direction kept
    with pytest.raises(ValueError):
        max_norm_(layer, 0.0)


def test_max_norm_covers_head_and_projections_skips_norms_and_sees_through_wrappers():
    from models import max_norm_

    m = FlexibleMLP(6, 3, [4, 5], skips=[(2, 0)], norm="batch")
    with torch.no_grad():
        for p in m.parameters():
            p.fill_(10.0)
    wrapped = torch.nn.Module()
    wrapped.module = m  # as DistributedDataParallel holds it
    max_norm_(wrapped, 1.0, exclude=("head",))
    for name in ("blocks.0.fc", "blocks.1.fc", "proj.2_0"):
        assert torch.allclose(_rows(m.get_submodule(name).weight), torch.ones(1))
    assert (m.head.weight == 10).all() and (m.blocks[0].norm.weight == 10).all() and (m.head.bias == 10).all()
    max_norm_(m, 1.0)
    assert torch.allclose(_rows(m.head.weight), torch.ones(1))


# ---------------------------------------------------------------- --init


def _linear_and_conv(model):
    return [m for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]


@pytest.mark.parametrize(
    "cfg,direct",
    [
        (ModelConfig(hidden_sizes=(16, 8), skips=((2, 0),)), lambda: FlexibleMLP(36, 3, [16, 8], skips=[(2, 0)])),
        (
            ModelConfig(name="FlexibleCNN", layers=(1, 1), width=4, norm="none"),
            lambda: FlexibleCNN(1, 3, (1, 1), width=4, residual=False, norm=False),
        ),
        (ModelConfig(name="resnet8", norm="batch"), lambda: PRESETS["resnet8"](1, 3)),
    ],
)
def test_default_init_is_the_model_as_constructed_bit_for_bit(cfg, direct):
    """--init default draws nothing more: published runs (built before the flag existed) reproduce exactly."""
    from dataclasses import asdict, replace

    from flags import from_dict

    built = []
    for c in (cfg, replace(cfg, init="default")):
        torch.manual_seed(0)
        built.append((build_model(c, (1, 6, 6), 3).state_dict(), torch.rand(3)))  # the RNG stream after it too
    torch.manual_seed(0)
    before = (direct().state_dict(), torch.rand(3))
    for sd, after in built:
        assert sd.keys() == before[0].keys() and all(torch.equal(sd[k], before[0][k]) for k in sd)
        assert torch.equal(after, before[1])
    old = {k: v for k, v in asdict(cfg).items() if k != "init"}  # a config.json written before --init
    assert from_dict(ModelConfig, old) == cfg and cfg.init == "default"
    with pytest.raises(ValueError):
        from_dict(ModelConfig, {**old, "init": "orthogonal"})


WIDE = [
    ModelConfig(hidden_sizes=(1024, 512), skips=((2, 0),)),  # the skip projection proj.2_0 too
    ModelConfig(name="FlexibleCNN", layers=(1, 1), width=64, norm="none"),
]


@pytest.mark.parametrize("cfg", WIDE)
@pytest.mark.parametrize("kind", ["he", "xavier"])
def test_he_and_xavier_weight_std_per_layer_and_zero_biases(cfg, kind):
    from dataclasses import replace

    torch.manual_seed(0)
    model = build_model(replace(cfg, init=kind), (3, 28, 28), 10)
    torch.manual_seed(0)
    default = build_model(cfg, (3, 28, 28), 10)
    layers = _linear_and_conv(model)
    assert len(layers) >= 3 and any(m.bias is not None for m in layers)
    for m, d in zip(layers, _linear_and_conv(default)):
        w = m.weight
        fan_in, fan_out = w[0].numel(), w.shape[0] * w[0, 0].numel()  # receptive field counted in both
        want = math.sqrt(2 / fan_in) if kind == "he" else math.sqrt(2 / (fan_in + fan_out))
        assert w.std().item() == pytest.approx(want, rel=0.05)
        assert not torch.equal(w, d.weight)  # re-drawn (FlexibleCNN's own convs may have the same std)
        if kind == "xavier":
            assert w.abs().max().item() <= math.sqrt(3) * want  # uniform on [-a, a], a = sqrt(3) std
        if m.bias is not None:
            assert not m.bias.any()


def test_init_leaves_norm_layers_and_runs_in_module_order():
    from models import init_weights

    torch.manual_seed(0)
    m = FlexibleMLP(12, 3, [8, 8], norm="batch")
    with torch.no_grad():
        for p in m.blocks[0].norm.parameters():
            p.fill_(0.7)
    torch.manual_seed(1)
    init_weights(m, "he")
    assert (m.blocks[0].norm.weight == 0.7).all() and (m.blocks[0].norm.bias == 0.7).all()
    again = FlexibleMLP(12, 3, [8, 8], norm="batch")
    torch.manual_seed(1)
    init_weights(again, "he")  # the same draws, whatever the weights held before
    assert all(torch.equal(a, b) for a, b in zip(again.head.parameters(), m.head.parameters()))
    with pytest.raises(ValueError):
        init_weights(m, "orthogonal")
    with torch.device("meta"):  # the size check builds on the meta device: nothing drawn, nothing allocated
        assert build_model(ModelConfig(init="he"), (1, 28, 28), 10).head.weight.is_meta


def test_init_flag_is_recorded_in_config_json(mnist_root, tmp_path):
    from conftest import run_cli

    p = run_cli(
        "exercise1.py",
        "--data_root",
        mnist_root,
        "--save_dir",
        tmp_path,
        "--init",
        "he",
        "--epochs",
        "1",
        "--depth",
        "1",
        "--hidden_size",
        "16",
        "--batch_size",
        "64",
        "--wandb",
        "disabled",
    )
    assert p.returncode == 0, p.stderr
    run = Path(p.stdout.strip().splitlines()[-1])
    assert json.loads((run / "config.json").read_text())["model"]["init"] == "he"
