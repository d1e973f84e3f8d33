"""ahv.toml: strict decoding with messages that name the key, and every key documented."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from ahv.config import MAX_DURATION_S, Config, ConfigError, load_config, parse_config

ROOT = Path(__file__).resolve().parent.parent
GOOD_KEY = '[[keys]]\nname = "a"\nkey = "k"\nwebhook_secret = "0123456789abcdef"\n'


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("[server]\nprot = 1\n", ["server", "prot"]),
        ("[sever]\nport = 1\n", ["sever"]),
        ('[server]\nport = "2022"\n', ["server.port", "int"]),
        ("[server]\nport = 70000\n", ["server.port", "65535"]),
        ("[queue]\ndefault_priority = 10\n", ["queue.default_priority", "9"]),
        ("[[backends]]\nname = \"g\"\nslots = 0\n", ["backends[0].slots", ">= 1"]),
        ('[[backends]]\nname = "g"\ndevice = "gpu0"\n', ["backends[0].device", "gpu0"]),
        ('[[backends]]\nname = "g"\n[[backends]]\nname = "g"\n', ["backends[1].name"]),
        ('[[keys]]\nname = "a"\nkey = "k"\nrole = "root"\nwebhook_secret = "0123456789abcdef"\n',
         ["keys[0].role"]),
        ('[[keys]]\nname = "a"\nwebhook_secret = "0123456789abcdef"\n', ["keys[0]", "key"]),
        ('[[keys]]\nname = "a"\nkey = "k"\nwebhook_secret = "short"\n',
         ["keys[0].webhook_secret"]),
        ('[fetch]\nallowed_networks = ["10.0.0.0/33"]\n', ["fetch.allowed_networks[0]"]),
        ('[server]\npublic_url = "example.com"\n', ["server.public_url"]),
        ("[server]\nsse_keepalive_s = 120\n", ["server.sse_keepalive_s", "50"]),
        ("[server\n", ["TOML"]),
        (GOOD_KEY + GOOD_KEY.replace('"a"', '"b"'), ["keys[1]", "same key as keys[0]"]),
        (GOOD_KEY.replace('"0123456789abcdef"', '"whsec_!!!notbase64!!!"'),
         ["keys[0].webhook_secret", "base64"]),
        ('[fetch]\nallowed_networks = ["127.0.0.1/8"]\n', ["fetch.allowed_networks[0]"]),
    ],
)  # fmt: skip
def test_bad_config_names_the_key(text: str, names: list[str]) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    for name in names:
        assert name in str(caught.value)


def test_sample_config_loads() -> None:
    config = load_config(ROOT / "ahv.toml")
    assert config.server.port == 2022
    assert config.backends[0].device == "cpu" and "upscale" in config.backends[0].tasks
    assert any(key.name == "demo" for key in config.keys)
    assert parse_config(GOOD_KEY).keys[0].name == "a"


def _documented_keys(struct: type[msgspec.Struct], prefix: str) -> list[tuple[str, str]]:
    """(section header, key) for every leaf field of the Config tree. The fields of a
    dict-of-Struct (`models.files`) come under `[models.files.NAME]`: any such table."""
    found: list[tuple[str, str]] = []
    hints = {f.name: f.type for f in msgspec.structs.fields(struct)}
    for name, hint in hints.items():
        inner = (
            getattr(hint, "__args__", (None,))[0]
            if getattr(hint, "__origin__", None) is list
            else None
        )
        value = (
            getattr(hint, "__args__", (None,))[-1]
            if getattr(hint, "__origin__", None) is dict
            else None
        )
        if isinstance(hint, type) and issubclass(hint, msgspec.Struct):
            # A nested section (`[providers.google]`) is named by its whole path.
            path = ".".join(part for part in (prefix.strip("[]"), name) if part)
            found += _documented_keys(hint, f"[{path}]")
        elif isinstance(value, type) and issubclass(value, msgspec.Struct):
            found += _documented_keys(value, f"[{prefix.strip('[]')}.{name}.NAME]")
        elif isinstance(inner, type) and issubclass(inner, msgspec.Struct):
            found += _documented_keys(inner, f"[[{name}]]")
        else:
            found.append((prefix, name))
    return found


def test_every_key_is_documented_in_the_sample_and_the_readme() -> None:
    sample = (ROOT / "ahv.toml").read_text()
    readme = (ROOT / "README.md").read_text()
    sections: dict[str, str] = {}
    current = ""
    for line in sample.splitlines():
        header = re.match(r"^(\[\[?[a-z0-9_.]+\]\]?)", line)
        if header:
            current = header.group(1)
        sections[current] = sections.get(current, "") + line + "\n"
    keys = _documented_keys(Config, "")
    assert len(keys) > 40
    for section, key in keys:
        block = sections.get(section, "")
        if "NAME" in section:
            pattern = re.escape(section).replace("NAME", "[a-z0-9_.-]+")
            block = "".join(text for head, text in sections.items() if re.fullmatch(pattern, head))
        assert re.search(rf"^#?\s*{key}\s*=", block, re.M), f"{section} {key} not in ahv.toml"
        name = f"{section.strip('[]')}.{key}"
        assert f"`{name}`" in readme, f"{name} not documented in README.md"


def test_check_config_command(tmp_path: Path) -> None:
    ok = subprocess.run(
        [sys.executable, "-m", "ahv", "check-config", "--config", str(ROOT / "ahv.toml")],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert ok.returncode == 0, ok.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text('[[backends]]\nname = "cpu"\ntasks = ["upscale", "teleport"]\n')
    typo = tmp_path / "typo.toml"
    typo.write_text("[queue]\ntimeouts_s = { upscal = 5 }\n")
    failed_typo = subprocess.run(
        [sys.executable, "-m", "ahv", "check-config", "--config", str(typo)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert failed_typo.returncode == 2
    assert "queue.timeouts_s" in failed_typo.stderr and "upscal" in failed_typo.stderr
    failed = subprocess.run(
        [sys.executable, "-m", "ahv", "check-config", "--config", str(bad)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert failed.returncode == 2
    assert "backends[0].tasks" in failed.stderr and "teleport" in failed.stderr
    assert "Traceback" not in failed.stderr


def broken_plugins(where: Path) -> dict[str, str]:
    """Two plugin modules in `where` whose import fails otherwise than with ImportError; the
    environment that makes them importable."""
    (where / "boom_plugin.py").write_text('raise RuntimeError("plugin boom")\n')
    (where / "syntax_plugin.py").write_text("TASKS = [\n")
    path = os.pathsep.join(p for p in (str(where), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path}


@pytest.mark.parametrize(
    ("plugin", "words"),
    [
        ("boom_plugin", ["RuntimeError", "plugin boom"]),
        ("syntax_plugin", ["SyntaxError", "syntax_plugin.py", "line 1"]),
    ],
)
def test_a_plugin_that_fails_to_import_is_a_config_error(
    tmp_path: Path, plugin: str, words: list[str]
) -> None:
    # Whatever a plugin's import raises: check-config and serve name the plugin and the
    # error, exit 2, no traceback; in json mode the refusal is a JSON line too.
    env = broken_plugins(tmp_path)
    config = tmp_path / "ahv.toml"
    config.write_text(
        f'[server]\nport = 0\ndata_dir = "{tmp_path / "data"}"\n'
        f'plugins = ["tests.plugin_tasks", "{plugin}"]\n'
    )
    expected = ["config error", "server.plugins[1]", repr(plugin), *words]
    for command in (["check-config"], ["serve"], ["serve", "--log-format", "json"]):
        done = subprocess.run(
            [sys.executable, "-m", "ahv", *command, "--config", str(config)],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env=env,
            timeout=60,
        )
        assert done.returncode == 2, (command, done.stderr)
        assert "Traceback" not in done.stderr and "listening" not in done.stdout
        lines = done.stderr.splitlines()
        if "json" in command:
            parsed = [json.loads(line) for line in lines]  # every line is JSON
            (refusal,) = [line for line in parsed if line.get("event") == "config_error"]
            assert refusal["level"] == "ERROR"
            message = refusal["msg"]
        else:
            (message,) = [line for line in lines if "config error" in line]
        for word in expected:
            assert word in message, (command, message)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[retention]\nfiles_s = 1e12\njobs_s = 1e12\n", "retention.files_s"),
        ("[retention]\njobs_s = inf\n", "retention.jobs_s"),
        ("[retention.tasks.sleep]\nfiles_s = 1e11\n", "retention.tasks"),
        ("[queue]\nretry_max_s = 1e300\n", "queue.retry_max_s"),
        ("[queue]\nage_step_s = 1e17\n", "queue.age_step_s"),
        ("[queue]\ntimeouts_s = { upscale = inf }\n", "queue.timeouts_s"),
        ("[webhooks]\nretry_after_max_s = 1e10\n", "webhooks.retry_after_max_s"),
        ("[server]\nshutdown_grace_s = inf\n", "server.shutdown_grace_s"),
    ],
)
def test_durations_have_an_upper_bound(text: str, key: str) -> None:
    # A duration is added to the current time: 1e12 s of retention made every finished job's
    # document a 500 (a datetime past the year 9999). Refused at load, naming the key.
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    assert key in str(caught.value) and str(int(MAX_DURATION_S)) in str(caught.value)
    # 100 years is accepted, and "for ever" stays 0.
    config = parse_config(f"[retention]\nfiles_s = {MAX_DURATION_S}\njobs_s = 0\n")
    assert config.retention.files_s == MAX_DURATION_S
