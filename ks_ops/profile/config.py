"""The profile's YAML config: parsed with yaml.safe_load into dataclasses, every error naming the
field path (``variants[1].replace[0].chain[0]: ...``). Unknown keys are errors (typos otherwise
pass silently). The schema (defaults in brackets):

    model:     {source: transformers, preset: gpt2 | gpt2-medium | vit-s16, task?: base | causal-lm |
                image-classification, config?: {config-class overrides}}
             | {source: timm, name: vit_small_patch16_224, config?: {create_model kwargs}}
             | {source: python, target: "module:function", config?: {kwargs}}   # runs user code
    input:     {batch_size, seq_len} (tokens) | {batch_size, image_size, channels? [3]} (images)
    workload:  forward | {generate: {prompt_len, new_tokens, cache?}} | a list of these   [forward]
               cache: auto | dynamic | static [auto: static where the variant is compiled, so that
               decode runs at fixed shapes, as a deployed compiled model does (transformers StaticCache)]
    dtype:     float32 | bfloat16 | float16 (fp32, bf16, fp16) | auto | a list    [auto: bf16 on GPU]
    device:    auto | cpu | cuda | cuda:N                                          [auto]
    compile:   false | default | max-autotune | reduce-overhead                   [false]
    seed:      int                                                                 [0]
    variants:  [{name, replace?: R | [R, ...], compile?}, ...]; the first is the ratios' baseline
               R = {modules: [fnmatch globs], chain: auto | [[a,b,c,d], ...] [auto], backend: [auto]}
    measure:   {warmup_s [5], window_s [2], trials [5], idle_baseline [true], meter: auto | zeus |
                nvml | time [auto]}
    output:    {json?, csv?, plot?}: paths, relative to --out-dir or the current directory

Lists of workloads and dtypes run as groups (every workload in every dtype), each with all variants.
"""
from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..backends import BACKENDS
from ..pattern import check_chain
from ..meters import PREFERENCES

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
COMPILE_MODES = ("default", "max-autotune", "reduce-overhead")
CACHES = ("auto", "dynamic", "static")
SOURCES = ("transformers", "timm", "python")

# The built-in profile of `python -m ks_ops.profile` with no argument: a small GPT-2, dense vs KS
# MLPs, on the GPU if there is one else the CPU; seconds on a 2-core CPU.
DEFAULT = {
    "model": {"source": "transformers", "preset": "gpt2",
              "config": {"n_layer": 2, "n_embd": 256, "n_head": 4, "n_positions": 256,
                         "vocab_size": 4096, "bos_token_id": 0, "eos_token_id": 0}},
    "input": {"batch_size": 8, "seq_len": 128},
    "workload": "forward",
    "dtype": "auto",
    "device": "auto",
    "variants": [{"name": "dense"},
                 {"name": "ks", "replace": {"modules": ["*.mlp.c_fc", "*.mlp.c_proj"], "chain": "auto"}}],
    "measure": {"warmup_s": 1, "window_s": 1, "trials": 3, "idle_baseline": True},
    "output": {"json": "ks_profile.json", "csv": "ks_profile.csv"},
}


class ConfigError(ValueError):
    """A config problem; the message starts with the field path."""


@dataclass
class ModelSpec:
    source: str
    preset: str | None = None  # transformers
    task: str | None = None  # transformers: causal-lm | base | image-classification (preset's default)
    name: str | None = None  # timm model name
    target: str | None = None  # python: "module:function" (runs user code)
    config: dict = field(default_factory=dict)  # config overrides / keyword arguments


@dataclass
class InputSpec:
    batch_size: int
    seq_len: int | None = None  # tokens
    image_size: int | None = None  # images
    channels: int = 3

    @property
    def kind(self) -> str:
        return "tokens" if self.seq_len is not None else "images"


@dataclass
class Workload:
    kind: str  # forward | generate
    prompt_len: int = 0
    new_tokens: int = 0
    cache: str = "auto"  # generate: auto | dynamic | static (KV cache of prefill and decode)

    @property
    def label(self) -> str:
        return "forward" if self.kind == "forward" else f"generate({self.prompt_len}+{self.new_tokens})"


@dataclass
class ReplaceSpec:
    modules: list[str]
    chain: Any  # "auto" or list of (a,b,c,d)
    backend: str = "auto"


@dataclass
class Variant:
    name: str
    replace: list[ReplaceSpec] = field(default_factory=list)
    compile: str | None = None  # overrides the top-level compile; None: inherit


@dataclass
class Measure:
    warmup_s: float = 5.0
    window_s: float = 2.0
    trials: int = 5
    idle_baseline: bool = True
    meter: str = "auto"


@dataclass
class Output:
    json: str | None = None
    csv: str | None = None
    plot: str | None = None


@dataclass
class Config:
    model: ModelSpec
    input: InputSpec
    workloads: list[Workload]
    dtypes: list[str]  # names; "auto" resolved by the runner (bfloat16 on cuda, float32 on cpu)
    device: str
    compile: str | None  # None: eager
    variants: list[Variant]
    measure: Measure
    output: Output
    seed: int = 0
    source: str = "<built-in default>"


# --- small typed readers, each raising ConfigError(path: ...) ---

def _fail(path: str, msg: str) -> ConfigError:
    return ConfigError(f"{path}: {msg}")


def _mapping(value, path: str, allowed: tuple[str, ...], required: tuple[str, ...] = ()) -> dict:
    if not isinstance(value, dict):
        raise _fail(path, f"must be a mapping, got {type(value).__name__} {value!r}")
    for key in value:
        if key not in allowed:
            raise _fail(f"{path}.{key}", f"unknown key; expected one of {list(allowed)}")
    for key in required:
        if key not in value:
            raise _fail(f"{path}.{key}", "is required")
    return value


def _int(value, path: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _fail(path, f"must be an integer >= {minimum}, got {value!r}")
    return value


def _number(value, path: str, positive: bool = False) -> float:
    # Finite only: warmup_s: .inf measured forever, .nan failed deep inside the run.
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0
            or (positive and value == 0)):
        raise _fail(path, f"must be a finite {'positive' if positive else 'non-negative'} number, got {value!r}")
    return float(value)


def _str(value, path: str, choices: tuple[str, ...] | None = None) -> str:
    if not isinstance(value, str) or not value:
        raise _fail(path, f"must be a non-empty string, got {value!r}")
    if choices is not None and value not in choices:
        raise _fail(path, f"must be one of {list(choices)}, got {value!r}")
    return value


def _list(value, path: str) -> list:
    if isinstance(value, list) and value:
        return value
    raise _fail(path, f"must be a non-empty list, got {value!r}")


def _compile(value, path: str) -> str | None:
    if value is False or value is None:
        return None
    if value is True:
        return "default"
    return _str(value, path, COMPILE_MODES)


# --- sections ---

def _model(raw, path="model") -> ModelSpec:
    m = _mapping(raw, path, ("source", "preset", "task", "name", "target", "config"), ("source",))
    spec = ModelSpec(source=_str(m["source"], f"{path}.source", SOURCES))
    overrides = m.get("config", {})
    if not isinstance(overrides, dict):
        raise _fail(f"{path}.config", f"must be a mapping, got {overrides!r}")
    spec.config = copy.deepcopy(overrides)
    needs = {"transformers": "preset", "timm": "name", "python": "target"}[spec.source]
    if needs not in m:
        raise _fail(f"{path}.{needs}", f"is required for source {spec.source}")
    for key in ("preset", "task", "name", "target"):
        if key in m:
            if key != "task" and key != needs:
                raise _fail(f"{path}.{key}", f"does not apply to source {spec.source}")
            setattr(spec, key, _str(m[key], f"{path}.{key}"))
    if spec.target is not None and ":" not in spec.target:
        raise _fail(f"{path}.target", f"must be 'module:function', got {spec.target!r}")
    return spec


def _input(raw, path="input") -> InputSpec:
    m = _mapping(raw, path, ("batch_size", "seq_len", "image_size", "channels"), ("batch_size",))
    if ("seq_len" in m) == ("image_size" in m):
        raise _fail(path, "give exactly one of seq_len (tokens) or image_size (images)")
    spec = InputSpec(batch_size=_int(m["batch_size"], f"{path}.batch_size"))
    if "seq_len" in m:
        spec.seq_len = _int(m["seq_len"], f"{path}.seq_len")
    else:
        spec.image_size = _int(m["image_size"], f"{path}.image_size")
        spec.channels = _int(m.get("channels", 3), f"{path}.channels")
    return spec


def _workload(raw, path: str) -> Workload:
    if raw == "forward":
        return Workload("forward")
    if isinstance(raw, dict) and list(raw) == ["generate"]:
        g = _mapping(raw["generate"], f"{path}.generate", ("prompt_len", "new_tokens", "cache"),
                     ("prompt_len", "new_tokens"))
        cache = g.get("cache", "auto")
        if cache not in CACHES:
            raise _fail(f"{path}.generate.cache", f"must be one of {list(CACHES)}, got {cache!r}")
        return Workload("generate", _int(g["prompt_len"], f"{path}.generate.prompt_len"),
                        _int(g["new_tokens"], f"{path}.generate.new_tokens"), cache)
    raise _fail(path, f"must be 'forward' or {{generate: {{prompt_len, new_tokens}}}}, got {raw!r}")


def _chain(raw, path: str):
    if raw == "auto":
        return "auto"
    for i, p in enumerate(_list(raw, path)):
        if not (isinstance(p, list) and len(p) == 4):
            raise _fail(f"{path}[{i}]", f"must be a list of 4 positive integers (a,b,c,d), got {p!r}")
        for j, v in enumerate(p):
            _int(v, f"{path}[{i}][{j}]")
    try:
        check_chain(raw)
    except ValueError as e:
        raise _fail(path, str(e)) from None
    return [tuple(p) for p in raw]


def _replace(raw, path: str) -> ReplaceSpec:
    m = _mapping(raw, path, ("modules", "chain", "backend"), ("modules",))
    mods = m["modules"]
    mods = [mods] if isinstance(mods, str) else _list(mods, f"{path}.modules")
    return ReplaceSpec(
        modules=[_str(g, f"{path}.modules[{i}]") for i, g in enumerate(mods)],
        chain=_chain(m.get("chain", "auto"), f"{path}.chain"),
        backend=_str(m.get("backend", "auto"), f"{path}.backend", tuple(BACKENDS) + ("auto",)),
    )


def _variants(raw, path="variants") -> list[Variant]:
    out, seen = [], set()
    for i, v in enumerate(_list(raw, path)):
        p = f"{path}[{i}]"
        m = _mapping(v, p, ("name", "replace", "compile"), ("name",))
        name = _str(m["name"], f"{p}.name")
        if name in seen:
            raise _fail(f"{p}.name", f"duplicate variant name {name!r}")
        seen.add(name)
        rep = m.get("replace", [])
        reps = [rep] if isinstance(rep, dict) else (rep if isinstance(rep, list) else None)
        if reps is None:
            raise _fail(f"{p}.replace", f"must be a mapping or a list of mappings, got {rep!r}")
        variant = Variant(name, [_replace(r, f"{p}.replace" + (f"[{j}]" if isinstance(rep, list) else ""))
                                 for j, r in enumerate(reps)])
        if "compile" in m:
            variant.compile = _compile(m["compile"], f"{p}.compile") or "eager"  # "eager": off here
        out.append(variant)
    return out


def _measure(raw, path="measure") -> Measure:
    m = _mapping(raw, path, ("warmup_s", "window_s", "trials", "idle_baseline", "meter"))
    d = Measure()
    idle = m.get("idle_baseline", d.idle_baseline)
    if not isinstance(idle, bool):
        raise _fail(f"{path}.idle_baseline", f"must be true or false, got {idle!r}")
    return Measure(
        warmup_s=_number(m.get("warmup_s", d.warmup_s), f"{path}.warmup_s"),
        window_s=_number(m.get("window_s", d.window_s), f"{path}.window_s", positive=True),
        trials=_int(m.get("trials", d.trials), f"{path}.trials"),
        idle_baseline=idle,
        meter=_str(m.get("meter", d.meter), f"{path}.meter", PREFERENCES),
    )


def _output(raw, path="output") -> Output:
    m = _mapping(raw, path, ("json", "csv", "plot"))
    return Output(**{k: (None if v is None else _str(v, f"{path}.{k}")) for k, v in m.items()})


def compile_mode(cfg: Config, variant: Variant) -> str | None:
    """The torch.compile mode of a variant (None: eager)."""
    mode = cfg.compile if variant.compile is None else variant.compile
    return None if mode == "eager" else mode


def _one_or_list(raw, path: str, parse) -> list:
    if isinstance(raw, list):
        return [parse(v, f"{path}[{i}]") for i, v in enumerate(_list(raw, path))]
    return [parse(raw, path)]


def parse(raw, source: str = "<dict>") -> Config:
    """Validates a loaded YAML document (a dict) into a Config."""
    top = _mapping(raw, "config", ("model", "input", "workload", "dtype", "device", "compile", "variants",
                                   "measure", "output", "seed"), ("model", "input", "variants"))
    cfg = Config(
        model=_model(top["model"]),
        input=_input(top["input"]),
        workloads=_one_or_list(top.get("workload", "forward"), "workload", _workload),
        dtypes=_one_or_list(top.get("dtype", "auto"), "dtype",
                            lambda v, p: _str(v, p, tuple(DTYPES) + ("auto",))),
        device=_str(top.get("device", "auto"), "device"),
        compile=_compile(top.get("compile", False), "compile"),
        variants=_variants(top["variants"]),
        measure=_measure(top.get("measure", {})),
        output=_output(top.get("output", {})),
        seed=_int(top.get("seed", 0), "seed", minimum=0),
        source=source,
    )
    check_device_name(cfg.device, "device")
    for i, w in enumerate(cfg.workloads):
        if w.kind == "generate" and cfg.input.kind != "tokens":
            raise _fail(f"workload[{i}]" if isinstance(top.get("workload"), list) else "workload",
                        "generate needs token input (input.seq_len), not images")
    return cfg


def check_device_name(name: str, path: str) -> None:
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", name):
        raise _fail(path, f"must be auto, cpu, cuda or cuda:N, got {name!r}")


def check_runnable(cfg: Config, outputs: dict[str, Path], field: str = "device") -> None:
    """What can only be checked on this machine, before anything is measured: the device exists,
    the output files can be written (their folders are created), the extras the run imports are
    installed. Raises ConfigError naming the field."""
    check_device_name(cfg.device, field)
    if cfg.device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise _fail(field, f"{cfg.device!r} was asked for but torch {torch.__version__} sees no CUDA GPU; "
                        f"use auto or cpu")
        index = int(cfg.device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise _fail(field, f"{cfg.device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    for key, path in outputs.items():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            probe = path.parent / f".{path.name}.probe"
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            raise _fail(f"output.{key}", f"cannot write {path} ({e.strerror})") from None
    needed = ["tabulate", "tqdm"] + (["transformers"] if cfg.model.source == "transformers" else [])
    for module in needed:
        try:
            __import__(module)
        except ImportError:
            raise ConfigError(f"the profiler needs {module!r}, which is not installed: "
                              f"pip install 'ks_ops[profile]'") from None


def load(path: str | Path) -> Config:
    try:
        import yaml
    except ImportError:
        raise ConfigError("reading a profile YAML needs pyyaml, which is not installed: "
                          "pip install 'ks_ops[profile]'") from None

    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config ({e.strerror})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    return parse(raw, str(path))


def default() -> Config:
    return parse(copy.deepcopy(DEFAULT))
