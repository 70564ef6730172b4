"""Models to profile, built without downloads, and the steps that run them.

Sources:
- ``transformers``: a preset (gpt2, gpt2-medium, vit-s16) with ``config`` overrides, random init,
  built from its config class (``AutoModel*.from_config``): nothing is fetched from the hub.
- ``timm``: ``timm.create_model(name, pretrained=False, **config)`` where timm is installed.
- ``python``: ``target: "module:function"``, called as ``function(**config)`` and returning an
  nn.Module. This imports and runs the user's own code.

A workload becomes phases, each a step (one iteration) with the units it processes: forward
(tokens or images per batch), or generate as prefill (prompt tokens) and decode (output tokens:
``new_tokens`` greedy steps on the KV cache, cropped back to the prompt before each run).
"""
from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .config import ConfigError, InputSpec, ModelSpec, Workload

# preset: (config class, config kwargs, input kind, default task)
PRESETS = {
    "gpt2": ("GPT2Config", {}, "tokens", "causal-lm"),
    "gpt2-medium": ("GPT2Config", {"n_layer": 24, "n_embd": 1024, "n_head": 16}, "tokens", "causal-lm"),
    "vit-s16": ("ViTConfig", {"hidden_size": 384, "num_hidden_layers": 12, "num_attention_heads": 6,
                              "intermediate_size": 1536, "image_size": 224, "patch_size": 16,
                              "num_labels": 1000}, "images", "image-classification"),
}
TASKS = {"base": "AutoModel", "causal-lm": "AutoModelForCausalLM",
         "image-classification": "AutoModelForImageClassification"}


@dataclass
class Phase:
    name: str  # forward | prefill | decode
    unit: str  # token | image | output token
    units: int  # per iteration
    step: Callable[[], object]


def _transformers(spec: ModelSpec, inp: InputSpec, workload_len: int) -> nn.Module:
    if spec.preset not in PRESETS:
        raise ConfigError(f"model.preset: unknown preset {spec.preset!r}; choose one of {list(PRESETS)}")
    import transformers

    cls_name, preset, kind, task = PRESETS[spec.preset]
    task = spec.task or task
    if task not in TASKS:
        raise ConfigError(f"model.task: must be one of {list(TASKS)}, got {task!r}")
    if inp.kind != kind:
        raise ConfigError(f"input: preset {spec.preset} takes {kind}, "
                          f"give input.{'seq_len' if kind == 'tokens' else 'image_size'}")
    config_cls = getattr(transformers, cls_name)
    known = config_cls(**preset)
    for key in spec.config:
        if not hasattr(known, key):
            raise ConfigError(f"model.config.{key}: not a field of {cls_name}")
    # The input sets the image geometry over the preset's, unless model.config sets it.
    geometry = {"image_size": inp.image_size, "num_channels": inp.channels} if kind == "images" else {}
    kwargs = {**preset, **geometry, **spec.config}
    if kind == "images":
        if kwargs["image_size"] != inp.image_size:
            raise ConfigError(f"input.image_size: {inp.image_size} differs from model.config.image_size "
                              f"{kwargs['image_size']}")
    config = config_cls(**kwargs)
    max_pos = getattr(config, "n_positions", None)
    if kind == "tokens" and max_pos is not None and workload_len > max_pos:
        raise ConfigError(f"input: {workload_len} tokens exceed the model's n_positions {max_pos} "
                          f"(set model.config.n_positions)")
    return getattr(transformers, TASKS[task]).from_config(config)


def build_model(spec: ModelSpec, inp: InputSpec, workloads: list[Workload]) -> nn.Module:
    """The model on the current default device, float32, random init (seed it before calling)."""
    longest = max(inp.seq_len or 0, *(w.prompt_len + w.new_tokens for w in workloads))
    if spec.source == "transformers":
        model = _transformers(spec, inp, longest)
    elif spec.source == "timm":
        import timm

        model = timm.create_model(spec.name, pretrained=False, **spec.config)
    else:
        module_name, _, func_name = spec.target.partition(":")
        try:
            func = getattr(importlib.import_module(module_name), func_name)
        except (ImportError, AttributeError) as e:
            raise ConfigError(f"model.target: cannot load {spec.target!r} ({e})") from None
        model = func(**spec.config)
        if not isinstance(model, nn.Module):
            raise ConfigError(f"model.target: {spec.target!r} returned {type(model).__name__}, not an nn.Module")
    if any(w.kind == "generate" for w in workloads) and getattr(model, "get_output_embeddings", lambda: None)() is None:
        raise ConfigError("workload: generate needs a transformers causal LM (model.source: transformers)")
    return model


def _input(inp: InputSpec, model: nn.Module, device, dtype, gen, seq_len=None):
    if inp.kind == "tokens":
        vocab = getattr(getattr(model, "config", None), "vocab_size", None) or 1000
        return torch.randint(0, vocab, (inp.batch_size, seq_len or inp.seq_len), generator=gen).to(device)
    x = torch.randn(inp.batch_size, inp.channels, inp.image_size, inp.image_size, generator=gen)
    return x.to(device=device, dtype=dtype)


def _static_cache(model: nn.Module, batch: int, length: int, device, dtype):
    """A transformers StaticCache of `length` positions (its constructor differs between 4.x and 5.x)."""
    try:
        from transformers import StaticCache
    except ImportError as e:
        raise ConfigError(f"workload: generate.cache: static needs transformers' StaticCache ({e})") from None
    if getattr(model, "_supports_static_cache", True) is False:  # transformers 4.x marks models without it
        raise ConfigError(f"workload: generate.cache: {type(model).__name__} has no static KV cache in this "
                          "transformers version; set generate.cache: dynamic (compiled variants default to static)")
    params = inspect.signature(StaticCache.__init__).parameters
    kwargs = {"config": model.config, "max_cache_len": length}
    if "max_batch_size" in params:
        kwargs.update(max_batch_size=batch, device=device, dtype=dtype)
    cache = StaticCache(**kwargs)
    # transformers 5.x allocates the layers on their first update. Under torch.compile that update
    # runs inside the compiled prefill, where the layers cannot mark their tensors as static
    # addresses: CUDA graphs then skip every graph that writes the cache ("mutated inputs"), and
    # the length counter stays a CPU tensor that Inductor's CUDA kernels cannot take (transformers
    # 5.17 + torch 2.11: a crash in the static launcher, or "Pointer argument must be either uint64
    # or have data_ptr method"). Allocating them here, outside compiled code, is transformers' own
    # remedy (StaticLayer.lazy_initialization's docstring).
    if hasattr(cache, "early_initialization"):
        cfg = model.config
        heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        cache.early_initialization(batch_size=batch, num_heads=heads, head_dim=head_dim, dtype=dtype,
                                   device=torch.device(device))
    return cache


def _rewind(cache, length: int) -> None:
    """Back to `length` cached positions, so that every run writes the same ones. transformers 5.x
    layers crop; its earlier 5.x static layers (5.17) cannot, but count their length in a tensor,
    set in place here (no host sync, the compiled graphs keep its address)."""
    layers = getattr(cache, "layers", None) or []
    counters = [getattr(layer, "cumulative_length", None) for layer in layers]
    if layers and not hasattr(layers[0], "crop") and all(torch.is_tensor(c) for c in counters):
        for c in counters:
            c.fill_(length)
        return
    grown = cache.get_seq_length() - length
    if grown > 0:
        cache.crop(-grown)


def phases(model: nn.Module, raw_model: nn.Module, spec: ModelSpec, inp: InputSpec, workload: Workload,
           device, dtype, seed: int) -> list[Phase]:
    """The phases of workload; model may be compiled, raw_model is the module it wraps."""
    gen = torch.Generator().manual_seed(seed)
    hf = spec.source == "transformers"
    if workload.kind == "forward":
        x = _input(inp, raw_model, device, dtype, gen)
        if not hf:
            call = lambda: model(x)  # noqa: E731
        elif inp.kind == "tokens":
            call = lambda: model(input_ids=x, use_cache=False)  # noqa: E731
        else:
            call = lambda: model(pixel_values=x)  # noqa: E731
        units = inp.batch_size * (inp.seq_len if inp.kind == "tokens" else 1)
        return [Phase("forward", "token" if inp.kind == "tokens" else "image", units, call)]

    prompt = _input(inp, raw_model, device, dtype, gen, seq_len=workload.prompt_len)
    params = inspect.signature(raw_model.forward).parameters
    # Only the last position's logits are needed, as generate() does (older versions lack it).
    keep = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
    static = workload.cache == "static" or (workload.cache == "auto" and model is not raw_model)
    cache = _static_cache(raw_model, inp.batch_size, workload.prompt_len + workload.new_tokens, device, dtype) \
        if static else None
    # transformers 4.x writes a static cache where cache_position says; 5.x counts in the cache.
    positions = static and "cache_position" in params
    past = "cache" if "cache" in params else "past_key_values"  # 5.x renamed the argument
    state = {}

    # The positions every run writes (4.x), built once rather than in the timed steps.
    def at(start, n):
        return {"cache_position": torch.arange(start, start + n, device=device)} if positions else {}

    prefill_at = at(0, workload.prompt_len)
    step_at = [at(workload.prompt_len + i, 1) for i in range(workload.new_tokens)]

    def prefill():
        if static:
            if not positions:
                _rewind(cache, 0)
            out = model(input_ids=prompt, use_cache=True, **{past: cache}, **keep, **prefill_at)
            state["cache"] = cache
        else:
            out = model(input_ids=prompt, use_cache=True, **keep)
            state["cache"] = out.past_key_values
        state["first"] = out.logits[:, -1:].argmax(-1)
        return out

    def decode():
        if "cache" not in state:
            prefill()
        kv = state["cache"]
        if not positions:
            _rewind(kv, workload.prompt_len)
        token = state["first"]
        for i in range(workload.new_tokens):
            out = model(input_ids=token, use_cache=True, **{past: kv}, **step_at[i])
            token = out.logits[:, -1:].argmax(-1)
        return token

    return [Phase("prefill", "token", inp.batch_size * workload.prompt_len, prefill),
            Phase("decode", "output token", inp.batch_size * workload.new_tokens, decode)]
