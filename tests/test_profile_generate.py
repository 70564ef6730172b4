"""The profiler's generate workload on the CPU: a static KV cache (what a compiled deployment uses,
and the default for compiled variants) decodes the same tokens as the dynamic one, run after run."""
import copy

import pytest
import torch

from ks_ops.profile import config, models

pytest.importorskip("transformers")


def tiny(cache: str):
    raw = copy.deepcopy(config.DEFAULT)
    raw["model"]["config"] = {"n_layer": 2, "n_embd": 32, "n_head": 4, "n_positions": 64, "vocab_size": 97,
                              "bos_token_id": 0, "eos_token_id": 0}
    raw.update(input={"batch_size": 3, "seq_len": 8}, device="cpu", dtype="float32",
               workload=[{"generate": {"prompt_len": 7, "new_tokens": 5, "cache": cache}}])
    cfg = config.parse(raw)
    torch.manual_seed(0)
    model = models.build_model(cfg.model, cfg.input, cfg.workloads).eval()
    return cfg, model


def decode_tokens(cfg, model, compiled=None, runs=2):
    ph = {p.name: p for p in models.phases(model if compiled is None else compiled, model, cfg.model, cfg.input, cfg.workloads[0],
                                           torch.device("cpu"), torch.float32, cfg.seed)}
    with torch.no_grad():
        outs = []
        for _ in range(runs):  # prefill and decode again and again: the runner's timed loops
            ph["prefill"].step()
            outs.append(ph["decode"].step())
            outs.append(ph["decode"].step())
    return outs


def test_workload_cache_parses():
    cfg, _ = tiny("static")
    assert cfg.workloads[0].cache == "static"
    raw = copy.deepcopy(config.DEFAULT)
    raw["workload"] = [{"generate": {"prompt_len": 4, "new_tokens": 2}}]
    assert config.parse(raw).workloads[0].cache == "auto"


def test_static_cache_decodes_what_the_dynamic_one_does():
    cfg_d, model = tiny("dynamic")
    cfg_s, _ = tiny("static")
    dynamic, static = decode_tokens(cfg_d, model), decode_tokens(cfg_s, model)
    assert all(torch.equal(t, dynamic[0]) for t in dynamic + static)
    assert dynamic[0].shape == (3, 1)


def test_compiled_variant_defaults_to_a_static_cache(monkeypatch):
    cfg, model = tiny("auto")
    made = []
    real = models._static_cache
    monkeypatch.setattr(models, "_static_cache", lambda *a: made.append(a) or real(*a))
    eager = decode_tokens(cfg, model)
    assert not made  # eager: the dynamic cache
    torch._dynamo.reset()
    compiled = decode_tokens(cfg, model, torch.compile(model, backend="eager"))
    assert len(made) == 1 and made[0][2] == 7 + 5  # one cache of prompt + new tokens
    assert all(torch.equal(t, eager[0]) for t in compiled)


def test_model_without_static_cache_is_named(monkeypatch):
    cfg, model = tiny("static")
    monkeypatch.setattr(type(model), "_supports_static_cache", False, raising=False)
    with pytest.raises(config.ConfigError, match=r"^workload: generate\.cache: GPT2LMHeadModel has no static KV cache"):
        models.phases(model, model, cfg.model, cfg.input, cfg.workloads[0], torch.device("cpu"), torch.float32, 0)


def test_rewind_sets_the_length_counter_of_layers_that_cannot_crop():
    """transformers 5.17's static layers have no crop: their tensor counter goes back in place."""
    from ks_ops.profile.models import _rewind

    class Layer:  # StaticLayer of transformers 5.17: a tensor length counter, no crop
        def __init__(self):
            self.cumulative_length = torch.tensor(9)

    class Cache:
        def __init__(self):
            self.layers = [Layer(), Layer()]

        def get_seq_length(self):
            raise AssertionError("no host read of the length")

    cache = Cache()
    counters = [layer.cumulative_length for layer in cache.layers]
    _rewind(cache, 4)
    assert [c.item() for c in counters] == [4, 4]
    assert all(layer.cumulative_length is c for layer, c in zip(cache.layers, counters))  # same tensors


def test_static_cache_is_allocated_before_the_compiled_prefill(monkeypatch):
    """The layers exist, at static addresses, before the first (compiled) forward writes them:
    allocated inside compiled code they cannot be marked, and CUDA graphs skip every graph that
    writes the cache (transformers 5.x allocates them on the first update)."""
    cfg, model = tiny("static")
    made = []
    real = models._static_cache
    monkeypatch.setattr(models, "_static_cache", lambda *a: made.append(real(*a)) or made[-1])
    models.phases(model, model, cfg.model, cfg.input, cfg.workloads[0], torch.device("cpu"), torch.float32, 0)
    (cache,) = made
    layers = getattr(cache, "layers", None)
    if not layers or not hasattr(cache, "early_initialization"):
        pytest.skip("transformers 4.x: the cache is allocated in its constructor")
    assert len(layers) == 2 and all(layer.is_initialized for layer in layers)
    for layer in layers:
        assert layer.keys.shape == layer.values.shape == (3, 4, 7 + 5, 8) and layer.keys.dtype == torch.float32
        for t in (layer.keys, layer.values, getattr(layer, "cumulative_length", layer.keys)):
            assert getattr(t, "_dynamo_static_input_type", None) is not None
