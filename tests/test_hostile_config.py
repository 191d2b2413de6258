"""Hostile configs, run names and code paths: rejected before Ray starts, naming the key.

Property tests draw, for every field of every section (read from the pydantic models, so new
fields are covered without editing this file), values of the wrong type or out of range and
check that `from_dict` / `load_config` raise ConfigError naming `section.key`. No test here
starts Ray; the static security checks read ganray's source.
"""

from __future__ import annotations

import ast
import math
import os
import shutil
import subprocess
import tempfile
import time
import types
import typing
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from ganray import cli
from ganray.config import _NAME_RE, Config, ConfigError, from_dict, load_config
from ganray.runfolder import run_path, storage_root

REPO = Path(__file__).resolve().parents[1]
FIELDS = [(section, key, field) for section, sf in Config.model_fields.items()
          for key, field in sf.annotation.model_fields.items()]
# Setting one of these to null leaves the run without a length (a separate, cross-field rule).
LENGTH_KEYS = {("train", "kimg"), ("train", "steps"), ("train", "max_minutes")}
PYDANTIC_BOOL_WORDS = {"0", "off", "f", "false", "n", "no", "1", "on", "t", "true", "y", "yes"}
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _kind(annotation) -> tuple[str, tuple, bool]:
    """(kind, literal choices, optional) of a field annotation."""
    args = typing.get_args(annotation)
    optional = isinstance(annotation, types.UnionType) and type(None) in args
    if optional:
        annotation = next(a for a in args if a is not type(None))
    origin = typing.get_origin(annotation)
    if origin is typing.Union and bool in typing.get_args(annotation):  # e.g. Literal["auto"] | bool
        words = [c for a in typing.get_args(annotation) if typing.get_origin(a) is typing.Literal
                 for c in typing.get_args(a)]
        return "bool_or_word", tuple(words), optional
    if origin is typing.Literal:
        return "literal", typing.get_args(annotation), optional
    if origin is list:
        return "list", typing.get_args(typing.get_args(annotation)[0]), optional
    return {bool: "bool", int: "int", float: "float", str: "str"}[annotation], (), optional


def _bounds(field) -> dict[str, float]:
    out = {}
    for m in field.metadata:
        for name in ("ge", "gt", "le", "lt"):
            if getattr(m, name, None) is not None:
                out[name] = getattr(m, name)
    return out


def _not_a_number(text: str) -> bool:
    try:
        float(text.replace("_", ""))
    except ValueError:
        return True
    return False


JUNK = st.one_of(st.lists(st.integers(), min_size=1, max_size=3),
                 st.dictionaries(st.text(max_size=3), st.integers(), min_size=1, max_size=2))


def _out_of_range(kind: str, b: dict) -> list:
    """Strategies for numbers just or far outside the field's bounds."""
    lo, lo_open = (b["gt"], True) if "gt" in b else (b.get("ge"), False)
    hi, hi_open = (b["lt"], True) if "lt" in b else (b.get("le"), False)
    out = []
    if kind == "int":
        if lo is not None:
            out.append(st.integers(max_value=math.ceil(lo) - (0 if lo_open else 1)))
        if hi is not None:
            out.append(st.integers(min_value=math.floor(hi) + (0 if hi_open else 1)))
        return out
    finite = dict(allow_nan=False, allow_infinity=False)
    if lo is not None:
        out += [st.floats(max_value=lo, exclude_max=not lo_open, **finite), st.just(-math.inf)]
    if hi is not None:  # +inf only where there is an upper bound: see test_infinite_lengths_...
        out += [st.floats(min_value=hi, exclude_min=not hi_open, **finite), st.just(math.inf)]
    if b:
        out.append(st.just(math.nan))
    return out


def invalid_value(field) -> st.SearchStrategy:
    kind, choices, optional = _kind(field.annotation)
    options = [JUNK] if kind != "list" else []
    if not optional:
        options.append(st.none())
    if kind == "literal":
        options += [st.text(max_size=12).filter(lambda t: t.strip() not in {str(c) for c in choices}),
                    st.integers().filter(lambda i: i not in choices)]
    elif kind in ("bool", "bool_or_word"):
        # ints other than 0/1, and words pydantic does not read as booleans (nor the field's own words)
        options += [st.integers().filter(lambda i: i not in (0, 1)),
                    st.text(max_size=8).filter(lambda t: t.strip().lower() not in PYDANTIC_BOOL_WORDS
                                               and t.strip() not in choices)]
    elif kind == "int":
        # (bools are accepted as 0/1 today: see test_booleans_are_not_integers)
        options += [st.floats(allow_nan=False, allow_infinity=False).filter(lambda x: not float(x).is_integer()),
                    st.text(max_size=8).filter(_not_a_number), *_out_of_range("int", _bounds(field))]
    elif kind == "float":
        options += [st.text(max_size=8).filter(_not_a_number), *_out_of_range("float", _bounds(field))]
    elif kind == "str":
        options += [st.integers(), st.floats(allow_nan=False), st.booleans()]
    elif kind == "list":
        options += [st.text(max_size=5), st.lists(st.text(max_size=5).filter(lambda t: t not in choices),
                                                  min_size=1, max_size=3)]
    return st.one_of(options)


def valid_value(section: str, key: str, field) -> st.SearchStrategy:
    kind, choices, optional = _kind(field.annotation)
    b = _bounds(field)
    if kind == "literal":
        s = st.sampled_from(choices)
    elif kind == "bool":
        s = st.booleans()
    elif kind == "bool_or_word":
        s = st.sampled_from([True, False, *choices])
    elif kind == "int":
        lo = b["ge"] if "ge" in b else b["gt"] + 1 if "gt" in b else -(2**40)
        s = st.integers(min_value=lo, max_value=b.get("le", 2**40))
    elif kind == "float":
        lo, hi = b.get("ge", b.get("gt", -1e9)), b.get("le", b.get("lt", 1e9))
        s = st.floats(min_value=lo, max_value=hi, exclude_min="gt" in b, exclude_max="lt" in b)
    elif kind == "list":
        s = st.lists(st.sampled_from(choices), max_size=4)
    elif key == "policy":
        s = st.lists(st.sampled_from(["color", "translation", "cutout"]), max_size=3).map(",".join)
    elif key == "name":
        s = st.from_regex(_NAME_RE, fullmatch=True).filter(lambda n: ".." not in n)
    else:
        s = st.text(max_size=20)
    return s | st.none() if optional and (section, key) not in LENGTH_KEYS else s


@st.composite
def one_bad_field(draw):
    section, key, field = draw(st.sampled_from(FIELDS))
    return section, key, draw(invalid_value(field))


@st.composite
def one_good_field(draw):
    section, key, field = draw(st.sampled_from(FIELDS))
    return section, key, draw(valid_value(section, key, field))


def _rejects(d: dict, section: str, key: str) -> str:
    with pytest.raises(ConfigError) as err:
        from_dict(d)
    assert f"{section}.{key}" in str(err.value), str(err.value)
    return str(err.value)


# --------------------------------------------------------------------------------------------
# Properties over every field


@SETTINGS
@given(one_bad_field())
def test_every_wrong_or_out_of_range_value_is_rejected_naming_the_key(case):
    section, key, value = case
    _rejects({section: {key: value}}, section, key)


@SETTINGS
@given(one_good_field())
def test_every_valid_value_is_accepted_as_given(case):
    section, key, value = case
    cfg = from_dict({section: {key: value}})
    got = getattr(getattr(cfg, section), key)
    assert got == value or (isinstance(value, float) and math.isclose(got, value))


@SETTINGS
@given(st.sampled_from(sorted(Config.model_fields)), st.from_regex(r"[a-z_][a-z0-9_]{0,15}", fullmatch=True))
def test_unknown_keys_are_rejected_naming_them(section, key):
    assume(key not in Config.model_fields[section].annotation.model_fields)
    msg = _rejects({section: {key: 1}}, section, key)
    assert f"{section}.{key}: unknown key" in msg


@SETTINGS
@given(st.from_regex(r"[a-z_][a-z0-9_]{0,15}", fullmatch=True))
def test_unknown_sections_are_rejected_naming_them(section):
    assume(section not in Config.model_fields)
    with pytest.raises(ConfigError, match=f"{section}: unknown key"):
        from_dict({section: {}})
    with pytest.raises(ConfigError, match=f"{section}: unknown section"):
        load_config(None, [f"{section}.x=1"])


@settings(max_examples=60, deadline=None)
@given(one_bad_field())
def test_bad_values_in_a_yaml_file_are_rejected_naming_the_key(case):
    section, key, value = case
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bad.yaml"
        path.write_text(yaml.safe_dump({section: {key: value}}))
        with pytest.raises(ConfigError) as err:
            load_config(path, preset="debug")
    assert f"{section}.{key}" in str(err.value)


@settings(max_examples=60, deadline=None)
@given(one_bad_field())
def test_bad_values_in_set_overrides_are_rejected_naming_the_key(case):
    section, key, value = case
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6).removesuffix("\n...\n").strip()
    with pytest.raises(ConfigError) as err:
        load_config(None, [f"{section}.{key}={text}"], preset="debug")
    assert f"{section}.{key}" in str(err.value)


def test_cross_field_rules_name_their_keys():
    msg = _rejects({"model": {"arch": "resnet"}, "data": {"resolution": 16}}, "model", "arch")
    assert "data.resolution" in msg
    msg = _rejects({"train": {"kimg": None, "steps": None, "max_minutes": None}}, "train", "kimg")
    assert "train.steps" in msg and "train.max_minutes" in msg


# --------------------------------------------------------------------------------------------
# Hostile YAML files


@pytest.mark.parametrize("text, says", [
    ("- a\n- b\n", "must hold a mapping"),
    ("train: 3\n", "train: expected a mapping"),
    ("train:\n  workers: [1\n", "not valid YAML"),
    ("\x00\x01", "not valid YAML"),
    ("train: !!python/object/apply:os.system ['touch {marker}']\n", "not valid YAML"),
    ("a: &a [x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
     "d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\neval:\n  metrics: *e\n", "a: unknown key"),
], ids=["list", "section-not-mapping", "broken", "binary", "python-tag", "billion-laughs"])
def test_hostile_yaml_files_are_rejected(tmp_path, text, says):
    marker = tmp_path / "PWNED"
    path = tmp_path / "bad.yaml"
    path.write_text(text.format(marker=marker))
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=says):
        load_config(path)
    assert time.perf_counter() - t0 < 5 and not marker.exists()


@pytest.mark.parametrize("data", [b"train:\n  x: " + b"[" * 20000 + b"]" * 20000 + b"\n", b"train:\n  workers: \xff\n"],
                         ids=["deeply-nested", "not-utf8"])
def test_unreadable_yaml_files_raise_config_errors(tmp_path, data):
    (tmp_path / "bad.yaml").write_bytes(data)
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(tmp_path / "bad.yaml")


@pytest.mark.parametrize("key", ["kimg", "report_every_kimg", "checkpoint_every_kimg", "max_minutes"])
def test_infinite_lengths_and_intervals_are_rejected(key):
    _rejects({"train": {key: math.inf}}, "train", key)


def test_booleans_are_not_integers():
    _rejects({"train": {"workers": True}}, "train", "workers")


# --------------------------------------------------------------------------------------------
# The command line: exit 2 with `ganray: error: <key>`, before anything starts Ray


def _no_training(monkeypatch):
    import ganray.launch

    def refuse(*a, **k):
        raise AssertionError("run_training was called for an invalid config")

    monkeypatch.setattr(ganray.launch, "run_training", refuse)


@pytest.mark.parametrize("body, key", [
    ("train:\n  workerz: 2\n", "train.workerz"),
    ("optim:\n  lr_g: fast\n", "optim.lr_g"),
    ("optim:\n  beta1: 1.5\n", "optim.beta1"),
    ("model:\n  arch: vit\n", "model.arch"),
    ("run:\n  name: ../../etc\n", "run.name"),
])
def test_cli_rejects_a_bad_config_file_before_training(tmp_path, monkeypatch, capsys, body, key):
    _no_training(monkeypatch)
    (tmp_path / "bad.yaml").write_text(body)
    assert cli.main(["train", "--config", str(tmp_path / "bad.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ganray: error:") and key in err and "Traceback" not in err


def test_cli_subprocess_exits_2_without_starting_ray(tmp_path):
    exe = shutil.which("ganray")
    if exe is None:
        pytest.skip("the ganray console script is not installed")
    (tmp_path / "bad.yaml").write_text("train:\n  workers: many\n")
    ray_tmp = Path(tempfile.mkdtemp(prefix="grl-", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_TMPDIR": str(ray_tmp)}
    t0 = time.perf_counter()
    r = subprocess.run([exe, "train", "--config", str(tmp_path / "bad.yaml")], env=env, capture_output=True,
                       text=True, timeout=120)
    seconds = time.perf_counter() - t0
    started = list(ray_tmp.rglob("session_*"))
    ray_tmp.rmdir() if not any(ray_tmp.iterdir()) else None
    assert r.returncode == 2 and r.stderr.startswith("ganray: error:") and "train.workers" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and not started, "a Ray session was started"
    print(f"`ganray train --config bad.yaml`: exit 2 after {seconds:.1f} s")


# --------------------------------------------------------------------------------------------
# Run names


UNSAFE_NAMES = st.one_of(
    st.tuples(st.text(max_size=8), st.sampled_from(["/", "..", "\\", "\x00"]), st.text(max_size=8)).map("".join),
    st.sampled_from(["..", ".", "../x", "a/../../b", "/abs", ".hidden", "-rf", "a" * 129, ""]),
)


@SETTINGS
@given(UNSAFE_NAMES)
def test_unsafe_run_names_are_rejected(name):
    _rejects({"run": {"name": name}}, "run", "name")


@settings(max_examples=100, deadline=None)
@given(UNSAFE_NAMES.filter(lambda n: n))
def test_cli_rejects_unsafe_run_names(name):
    with pytest.raises(ConfigError, match="run.name"):
        cli.config_from_args(cli.build_parser().parse_args(["train", "--preset", "debug", f"--name={name}"]))


@SETTINGS
@given(st.from_regex(_NAME_RE, fullmatch=True).filter(lambda n: ".." not in n))
def test_safe_names_pass_the_cli_as_typed_and_stay_under_out(name):
    # `--name 2024`, `--name yes` and `--name null` were read as YAML int, bool and None.
    cfg = cli.config_from_args(cli.build_parser().parse_args(["train", "--preset", "debug", f"--name={name}"]))
    assert cfg.run.name == name
    path = Path(run_path("/tmp/runs", name))
    assert path.parent == Path(storage_root("/tmp/runs")) and path.name == name


@SETTINGS
@given(st.text(min_size=1, max_size=30).filter(lambda t: "\x00" not in t))
def test_data_and_out_paths_pass_the_cli_as_typed(text):
    args = cli.build_parser().parse_args(["train", "--preset", "debug", f"--data={text}", f"--out={text}"])
    cfg = cli.config_from_args(args)
    assert cfg.data.source == text and cfg.run.out == text


# --------------------------------------------------------------------------------------------
# Security: no unsafe deserialisation, local Ray dashboard and token authentication untouched


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


def _kw(call: ast.Call, name: str):
    for k in call.keywords:
        if k.arg == name:
            return k.value.value if isinstance(k.value, ast.Constant) else "<expr>"
    return None


def _sources():
    for path in sorted((REPO / "ganray").rglob("*.py")):
        yield path.relative_to(REPO), ast.parse(path.read_text())


def test_no_code_path_deserialises_with_pickle():
    bad = []
    for rel, tree in _sources():
        for call, fn in _calls(tree):
            where = f"{rel}:{call.lineno} {fn}"
            if _kw(call, "weights_only") not in (None, True):
                bad.append(f"{where}(weights_only={_kw(call, 'weights_only')})")
            if fn.endswith("torch.load") and _kw(call, "weights_only") is not True:
                bad.append(f"{where} without weights_only=True")
            if fn in ("pickle.load", "pickle.loads", "cloudpickle.load", "cloudpickle.loads", "yaml.unsafe_load",
                      "yaml.full_load") or _kw(call, "allow_pickle") not in (None, False):
                bad.append(where)
            if fn == "yaml.load" and "Safe" not in ast.unparse(call):
                bad.append(where)
    assert not bad, bad


def test_no_torch_hub_load_defaults_to_unpickling():
    bad = [f"{rel}:{call.lineno}" for rel, tree in _sources() for call, fn in _calls(tree)
           if fn.endswith(("hub.load_state_dict_from_url", "hub.load")) and _kw(call, "weights_only") is not True]
    assert not bad, bad


def test_local_ray_keeps_dashboard_local_and_token_auth_on():
    """Nothing in ganray opens the dashboard beyond 127.0.0.1 or turns token authentication off.
    (test_reliability's killed-driver test checks the running processes of a real local Ray.)"""
    bad = []
    for rel, tree in _sources():
        for call, fn in _calls(tree):
            host = _kw(call, "dashboard_host")
            if host not in (None, "127.0.0.1", "localhost"):
                bad.append(f"{rel}:{call.lineno} dashboard_host={host}")
            if fn.endswith("ray.init") and _kw(call, "include_dashboard") not in (False, None) and host is None:
                bad.append(f"{rel}:{call.lineno} dashboard without a host")
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and "0.0.0.0" in node.value:
                bad.append(f"{rel}:{node.lineno} {node.value!r}")
            # Any assignment or call that touches the auth mode (RAY_AUTH_MODE, AUTH_MODE_ENV, ...)
            # and mentions "disabled" would switch authentication off.
            if isinstance(node, (ast.Assign, ast.Call)) and "AUTH_MODE" in (text := ast.unparse(node)):
                if "disabled" in text.lower() and not text.startswith(("print", "logger", "fail")):
                    bad.append(f"{rel}:{node.lineno} {text[:80]}")
    assert not bad, bad
