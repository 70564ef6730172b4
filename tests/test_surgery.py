import copy

import pytest
import torch
from torch import nn

from ks_ops import KSLinear, KSPattern
from ks_ops.surgery import auto_chain, ks_surgery

transformers = pytest.importorskip("transformers")
from transformers.pytorch_utils import Conv1D  # noqa: E402

PAPER = {  # the paper's ViT-S/16 chains, first factor applied first
    (384, 384): [(2, 48, 192, 1), (1, 192, 48, 2)],
    (384, 1536): [(6, 64, 64, 1), (1, 768, 192, 2)],
    (1536, 384): [(6, 64, 256, 1), (1, 128, 128, 3)],
}


def tiny_gpt2():
    cfg = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=2, n_positions=32, vocab_size=128,
                                  bos_token_id=0, eos_token_id=0)
    return transformers.AutoModelForCausalLM.from_config(cfg).eval()


def tiny_vit():
    cfg = transformers.ViTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=256, image_size=32, patch_size=16, num_labels=10)
    return transformers.AutoModelForImageClassification.from_config(cfg).eval()


def shapes(chain):
    return [p.shape for p in chain]


@pytest.mark.parametrize("io", list(PAPER))
def test_auto_chain_reproduces_the_papers_vit_chains(io):
    assert shapes(auto_chain(*io)) == PAPER[io]


@pytest.mark.parametrize("io, expected", [
    ((768, 3072), [(12, 64, 64, 1), (1, 1536, 384, 2)]),
    ((3072, 768), [(12, 64, 256, 1), (1, 128, 128, 6)]),
    ((1024, 4096), [(16, 64, 64, 1), (1, 2048, 512, 2)]),
    ((4096, 1024), [(16, 64, 256, 1), (1, 128, 128, 8)]),
    ((1024, 1024), [(2, 128, 512, 1), (1, 512, 128, 2)]),
    ((768, 2304), [(12, 64, 64, 1), (1, 1152, 384, 2)]),
])
def test_auto_chain_for_gpt2_sizes(io, expected):
    chain = auto_chain(*io)
    assert shapes(chain) == expected
    assert (chain[0].in_features, chain[-1].out_features) == io
    assert sum(p.nnz for p in chain) < io[0] * io[1]


@pytest.mark.parametrize("io", [(100, 100), (7, 14), (13, 5)])
def test_auto_chain_fails_clearly(io):
    with pytest.raises(ValueError, match=rf"in={io[0]}, out={io[1]}.*explicitly"):
        auto_chain(*io)


def test_surgery_keeps_shapes_and_leaves_other_modules_untouched():
    model = tiny_gpt2()
    before = {n: (m, {k: p.clone() for k, p in m.named_parameters(recurse=False)})
              for n, m in model.named_modules()}
    x = torch.randint(0, 128, (2, 8))
    y0 = model(input_ids=x).logits
    report = ks_surgery(model, {"*.mlp.c_fc": "auto", "*.mlp.c_proj": [(2, 32, 128, 1), (1, 32, 32, 2)]})
    replaced = {r.name for r in report.replacements}
    assert replaced == {f"transformer.h.{i}.mlp.{n}" for i in range(2) for n in ("c_fc", "c_proj")}
    for name, (module, params) in before.items():
        now = model.get_submodule(name)
        if name in replaced:
            assert isinstance(now, KSLinear)
            assert torch.equal(now.bias, params["bias"])  # the dense bias is kept
            continue
        if any(r.startswith(name + ".") or name == "" for r in replaced):
            continue  # a parent of a replaced module
        if name.endswith(".mlp.act"):  # folded into c_fc's KSLinear
            assert isinstance(now, torch.nn.Identity)
            continue
        assert now is module
        for k, p in now.named_parameters(recurse=False):
            assert torch.equal(p, params[k])
    assert model(input_ids=x).logits.shape == y0.shape
    r = report.replacements[0]
    assert (r.in_features, r.out_features, r.glob) == (64, 256, "*.mlp.c_fc")
    assert r.params_before == 64 * 256 + 256 and r.params_after == sum(p.nnz for p in r.chain) + 256
    assert report.params_after < report.params_before


def set_dense_twin(twin: nn.Module, ks_model: nn.Module, report) -> None:
    """Gives twin's dense modules the matrices of ks_model's KSLinear chains."""
    with torch.no_grad():
        for r in report.replacements:
            ks, dense = ks_model.get_submodule(r.name), twin.get_submodule(r.name)
            k = ks.to_dense()
            dense.weight.copy_(k.T if isinstance(dense, Conv1D) else k)
            dense.bias.copy_(ks.bias)


@pytest.mark.parametrize("build, inputs, rules", [
    (tiny_gpt2, lambda: {"input_ids": torch.randint(0, 128, (2, 8))},
     {"*.attn.c_attn": "auto", "*.attn.c_proj": "auto", "*.mlp.c_fc": "auto", "*.mlp.c_proj": "auto"}),
    (tiny_vit, lambda: {"pixel_values": torch.randn(2, 3, 32, 32)},
     {"*.q_proj": "auto", "*.k_proj": "auto", "*.v_proj": "auto", "*.mlp.fc1": "auto", "*.mlp.fc2": "auto"}),
])
def test_ks_model_equals_its_dense_twin(build, inputs, rules):
    model = build()
    twin = copy.deepcopy(model)
    report = ks_surgery(model, rules)
    set_dense_twin(twin, model, report)
    x = inputs()
    with torch.no_grad():
        torch.testing.assert_close(model(**x).logits, twin(**x).logits, rtol=1e-4, atol=1e-5)


def test_linear_gets_the_papers_chain_and_init():
    model = nn.Sequential(nn.Linear(384, 1536), nn.GELU(), nn.Linear(1536, 384, bias=False))
    report = ks_surgery(model, {"0": "auto", "2": PAPER[(1536, 384)]}, backend="bmm")
    assert shapes(model[0].patterns) == PAPER[(384, 1536)] and model[2].bias is None
    assert model[0].backend == "bmm" and isinstance(model[1], nn.GELU)
    for p, w in zip(model[0].patterns, model[0].factors):  # U[-1/c, 1/c]
        assert w.abs().max() <= 1 / p.c
    assert len(report.replacements) == 2 and "replaced 2 modules" in str(report)
    assert model(torch.randn(3, 384)).shape == (3, 384)


def test_glob_that_matches_nothing_is_named_and_the_model_is_untouched():
    model = tiny_gpt2()
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=r"'\*\.mlp\.c_nope' matched no nn.Linear or Conv1D"):
        ks_surgery(model, {"*.mlp.c_fc": "auto", "*.mlp.c_nope": "auto"})
    with pytest.raises(ValueError, match=r"'\*\.ln_1' matched no nn.Linear.*of other types"):
        ks_surgery(model, {"*.ln_1": "auto"})
    assert not any(isinstance(m, KSLinear) for m in model.modules())
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_chain_errors_name_the_glob():
    model = tiny_gpt2()
    with pytest.raises(ValueError, match=r"glob '\*\.mlp\.c_fc'.*64->256.*chain"):
        ks_surgery(model, {"*.mlp.c_fc": [(2, 48, 192, 1), (1, 192, 48, 2)]})
    with pytest.raises(ValueError, match=r"matched by globs '\*\.c_fc' and '\*\.mlp\.\*'"):
        ks_surgery(model, {"*.c_fc": "auto", "*.mlp.*": "auto"})
    with pytest.raises(ValueError, match=r"glob '\*\.c_fc'.*outputs"):
        ks_surgery(model, {"*.c_fc": [(1, 64, 64, 1), (1, 256, 32, 1)]})


def test_surgery_keeps_device_and_dtype():
    model = nn.Sequential(nn.Linear(64, 64)).to(torch.float64)
    ks_surgery(model, {"0": "auto"})
    assert all(p.dtype == torch.float64 for p in model.parameters())
    assert KSPattern.of_weights(model[0].factors[0]) == KSPattern(2, 8, 32, 1)


@pytest.mark.parametrize("make", [tiny_gpt2, tiny_vit], ids=["gpt2", "vit"])
def test_folded_activation_leaves_the_output_unchanged(make):
    """Surgery folds the MLP's activation into the first KSLinear's ks::chain epilogue; the model
    computes the same function as with the activation left in place (float32 round-off)."""
    torch.manual_seed(1)
    base = make()
    plain, folded = copy.deepcopy(base), copy.deepcopy(base)
    rules = {"*mlp.c_fc": "auto"} if make is tiny_gpt2 else {"*mlp.fc1": "auto"}
    torch.manual_seed(2)
    ks_surgery(plain, rules, fold_activations=False)
    torch.manual_seed(2)
    report = ks_surgery(folded, rules)
    acts = {r.activation for r in report.replacements}
    assert len(report.replacements) == 2 and acts == {"gelu_tanh" if make is tiny_gpt2 else "gelu"}
    assert "folded in" in str(report) and report.as_dicts()[0]["activation"] in acts
    layers = [m for m in folded.modules() if isinstance(m, KSLinear)]
    assert all(m.activation in acts for m in layers)
    assert sum(isinstance(m, nn.Identity) for m in folded.modules()) >= 2
    x = torch.randint(0, 128, (3, 11)) if make is tiny_gpt2 else torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        y_plain, y_folded = plain(x).logits, folded(x).logits
    err = ((y_folded - y_plain).norm() / y_plain.norm()).item()
    assert err <= 1e-5, err


def test_surgery_refuses_tied_weights_and_leaves_tying_intact():
    """A tied lm_head (it shares its weight with the token embedding) is refused before the model
    is touched -- replacing it used to untie it and add parameters while the report said some were
    removed; with other layers replaced, transformers' tie_weights() still works."""
    model = tiny_gpt2()
    assert model.lm_head.weight is model.transformer.wte.weight
    with pytest.raises(ValueError, match=r"'lm_head' shares its weight with \['transformer.wte'\]"):
        ks_surgery(model, {"*.mlp.c_fc": "auto", "lm_head": [(1, 128, 64, 1)]})
    assert not any(isinstance(m, KSLinear) for m in model.modules())
    ks_surgery(model, {"*.mlp.c_fc": "auto"})
    model.tie_weights()
    assert model.lm_head.weight is model.transformer.wte.weight


def test_project_init_keeps_what_the_model_learned():
    """init="project" starts each layer from its dense weight's projection (issue from-dense): the
    report carries each layer's error, and the logits move far less than with the paper's random
    init -- on a GPT-2 from config (random dense weights: the projection keeps about 70 % of each
    weight's energy) and, by a wide margin, once its MLP weights have structure to keep (low rank
    plus noise, a stand-in for training)."""
    base = tiny_gpt2()
    ids = torch.randint(0, 128, (3, 17))
    rules = {"*.mlp.c_fc": "auto", "*.mlp.c_proj": "auto"}

    def change(model_before, init):
        model = copy.deepcopy(model_before)
        report = ks_surgery(model, rules, init=init)
        with torch.no_grad():
            y0, y = model_before(ids).logits, model(ids).logits
        return ((y - y0).norm() / y0.norm()).item(), report

    random_change, report = change(base, "random")
    assert all(r.approx_error is None for r in report.replacements)
    project_change, report = change(base, "project")
    errors = [r.approx_error for r in report.replacements]
    assert len(errors) == 4 and all(0 < e < 0.6 for e in errors) and "projection error" in str(report)
    assert project_change < 0.8 * random_change
    with torch.no_grad():
        for name, module in base.named_modules():
            if name.endswith(("mlp.c_fc", "mlp.c_proj")):
                w = module.weight
                module.weight.copy_(0.05 * torch.randn(w.shape[0], 4) @ torch.randn(4, w.shape[1]) + 0.002 * torch.randn_like(w))
    random_change, _ = change(base, "random")
    project_change, _ = change(base, "project")
    assert project_change < 0.1 * random_change, (project_change, random_change)
    with pytest.raises(ValueError, match="init must be"):
        ks_surgery(copy.deepcopy(base), rules, init="zeros")
