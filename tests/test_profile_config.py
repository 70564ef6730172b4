import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ks_ops.profile import config
from ks_ops.profile.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]

ISSUE_YAML = """
model: {source: transformers, preset: gpt2, config: {n_layer: 2}}
input: {batch_size: 4, seq_len: 32}      # tokens; or {batch_size: 128, image_size: 224}: images
workload: forward                          # or generate: {prompt_len: 128, new_tokens: 128}
dtype: bfloat16
device: cuda
compile: false                             # or default | max-autotune | reduce-overhead
variants:
  - name: dense
  - name: ks
    replace: {modules: ["*.mlp.c_fc", "*.mlp.c_proj"], chain: auto, backend: auto}
measure: {warmup_s: 5, window_s: 2, trials: 5, idle_baseline: true}
output: {json: results.json, csv: results.csv, plot: results.png}
"""


def issue_dict():
    return yaml.safe_load(ISSUE_YAML)


def test_the_issue_shape_parses(tmp_path):
    path = tmp_path / "model.yaml"
    path.write_text(ISSUE_YAML)
    cfg = config.load(path)
    assert cfg.model.preset == "gpt2" and cfg.model.config == {"n_layer": 2}
    assert (cfg.input.batch_size, cfg.input.seq_len, cfg.input.kind) == (4, 32, "tokens")
    assert [w.kind for w in cfg.workloads] == ["forward"] and cfg.dtypes == ["bfloat16"]
    assert cfg.device == "cuda" and cfg.compile is None
    ks = cfg.variants[1]
    assert ks.replace[0].modules == ["*.mlp.c_fc", "*.mlp.c_proj"] and ks.replace[0].chain == "auto"
    assert (cfg.measure.warmup_s, cfg.measure.window_s, cfg.measure.trials, cfg.measure.idle_baseline) == (5, 2, 5, True)
    assert cfg.output.plot == "results.png"


def test_generate_lists_and_explicit_chains():
    raw = issue_dict()
    raw.update(workload=["forward", {"generate": {"prompt_len": 128, "new_tokens": 64}}],
               dtype=["bf16", "float32"], compile="max-autotune")
    raw["variants"][1]["replace"] = [{"modules": "*.c_fc", "chain": [[2, 48, 192, 1], [1, 192, 48, 2]]},
                                     {"modules": ["*.c_proj"], "backend": "bmm"}]
    raw["variants"][1]["compile"] = False
    cfg = config.parse(raw)
    assert [w.label for w in cfg.workloads] == ["forward", "generate(128+64)"]
    assert cfg.variants[1].replace[0].chain == [(2, 48, 192, 1), (1, 192, 48, 2)]
    assert cfg.variants[1].replace[1].backend == "bmm" and cfg.variants[1].replace[1].chain == "auto"
    assert config.compile_mode(cfg, cfg.variants[0]) == "max-autotune"
    assert config.compile_mode(cfg, cfg.variants[1]) is None


def mutate(path: str, value):
    """issue_dict() with the value at a dotted path (list indices as ints) set, or deleted if DELETE."""
    raw = issue_dict()
    keys = [int(k) if k.isdigit() else k for k in path.split(".")]
    node = raw
    for k in keys[:-1]:
        node = node[k]
    if value is DELETE:
        del node[keys[-1]]
    else:
        node[keys[-1]] = value
    return raw


DELETE = object()


@pytest.mark.parametrize("path, value, message", [
    ("input.batch_size", 0, r"^input\.batch_size: must be an integer >= 1, got 0"),
    ("input.image_size", 224, r"^input: give exactly one of seq_len"),
    ("measure.trials", "five", r"^measure\.trials: must be an integer"),
    ("measure.window_s", 0, r"^measure\.window_s: must be a finite positive number"),
    ("measure.windw_s", 2, r"^measure\.windw_s: unknown key"),
    ("measure.idle_baseline", "yes", r"^measure\.idle_baseline: must be true or false"),
    ("measure.meter", "rapl", r"^measure\.meter: must be one of"),
    ("compile", "fast", r"^compile: must be one of \['default', 'max-autotune', 'reduce-overhead'\]"),
    ("dtype", "int8", r"^dtype: must be one of"),
    ("device", "tpu", r"^device: must be auto, cpu, cuda"),
    ("model.source", "onnx", r"^model\.source: must be one of"),
    ("model.preset", DELETE, r"^model\.preset: is required for source transformers"),
    ("model.target", "x:y", r"^model\.target: does not apply to source transformers"),
    ("model", DELETE, r"^config\.model: is required"),
    ("workload", {"generate": {"prompt_len": 8}}, r"^workload\.generate\.new_tokens: is required"),
    ("workload", "train", r"^workload: must be 'forward' or"),
    ("workload", {"generate": {"prompt_len": 8, "new_tokens": 4, "cache": "paged"}},
     r"^workload\.generate\.cache: must be one of \['auto', 'dynamic', 'static'\]"),
    ("variants", [], r"^variants: must be a non-empty list"),
    ("variants.1.name", "dense", r"^variants\[1\]\.name: duplicate variant name 'dense'"),
    ("variants.1.replace.modules", [], r"^variants\[1\]\.replace\.modules: must be a non-empty list"),
    ("variants.1.replace.chain", [[1, 2, 3]], r"^variants\[1\]\.replace\.chain\[0\]: must be a list of 4"),
    ("variants.1.replace.chain", [[1, 2, 0, 1]], r"^variants\[1\]\.replace\.chain\[0\]\[2\]: must be an integer >= 1"),
    ("variants.1.replace.chain", [[2, 48, 192, 1], [1, 192, 96, 2]],
     r"^variants\[1\]\.replace\.chain: KS chain: factor 0 \(2,48,192,1\) outputs 96"),
    ("variants.1.replace.backend", "cuda", r"^variants\[1\]\.replace\.backend: must be one of"),
    ("output.pdf", "x.pdf", r"^output\.pdf: unknown key"),
])
def test_errors_name_the_field_path(path, value, message):
    with pytest.raises(ConfigError, match=message):
        config.parse(mutate(path, value))


def test_generate_needs_tokens():
    raw = issue_dict()
    raw.update(input={"batch_size": 2, "image_size": 224}, workload=[{"generate": {"prompt_len": 4, "new_tokens": 4}}])
    with pytest.raises(ConfigError, match=r"^workload\[0\]: generate needs token input"):
        config.parse(raw)


PROFILES = sorted(p.name for p in (ROOT / "profiles").glob("*.yaml"))


def test_profiles_folder_is_found():
    assert "cpu_small.yaml" in PROFILES and "gpt2_medium_decode_compiled_b128.yaml" in PROFILES


@pytest.mark.parametrize("name", PROFILES)
def test_committed_profiles_are_valid(name):
    cfg = config.load(ROOT / "profiles" / name)
    assert cfg.variants[0].name == "dense" and cfg.output.json


def test_default_is_valid():
    cfg = config.default()
    assert cfg.device == "auto" and cfg.variants[1].replace
    assert config.DEFAULT == copy.deepcopy(config.DEFAULT)


def run_cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "ks_ops.profile", *args, "--no-progress"],
                          capture_output=True, text=True, cwd=cwd, timeout=120)


@pytest.mark.parametrize("text, message", [
    ("measure: {trials: 0}\n", "config.model: is required"),
    ("model: [\n", "not valid YAML"),
])
def test_cli_config_error_exits_2_without_traceback(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    r = run_cli(str(path), cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr


def test_cli_missing_file_and_bad_override_exit_2(tmp_path):
    r = run_cli(str(tmp_path / "nope.yaml"), cwd=tmp_path)
    assert r.returncode == 2 and "cannot read the config" in r.stderr and "Traceback" not in r.stderr
    r = run_cli(str(ROOT / "profiles" / "cpu_small.yaml"), "--trials", "0", cwd=tmp_path)
    assert r.returncode == 2 and "command line.trials: must be an integer >= 1" in r.stderr


def test_cli_glob_matching_nothing_exits_2_naming_it(tmp_path):
    raw = yaml.safe_load((ROOT / "profiles" / "cpu_small.yaml").read_text())
    raw["variants"][1]["replace"]["modules"] = ["*.mlp.c_fc", "*.mlp.fc9"]
    raw["model"]["config"]["n_layr"] = 3
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    r = run_cli(str(path), cwd=tmp_path)
    assert r.returncode == 2 and "model.config.n_layr: not a field of GPT2Config" in r.stderr
    del raw["model"]["config"]["n_layr"]
    path.write_text(yaml.safe_dump(raw))
    r = run_cli(str(path), cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "variants[1].replace[0]: ks_surgery: glob '*.mlp.fc9' matched no" in r.stderr
    assert "Traceback" not in r.stderr
