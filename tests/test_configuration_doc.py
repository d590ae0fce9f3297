"""docs/configuration.md against the settings schema: one row per setting, with the real default."""

import dataclasses
import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from aggregator.config import Settings, load_settings

REPO_ROOT = Path(__file__).resolve().parents[1]
PAGE = REPO_ROOT / "docs" / "configuration.md"
GENERATOR = REPO_ROOT / "docs" / "gen_configuration.py"
# A settings row: | `key` | type | `default` | unit | meaning |
ROW = re.compile(r"^\| `(?P<key>[a-z0-9_]+)` \| [^|]+ \| `(?P<default>[^`]*)` \| [^|]+ \| .+ \|$")


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_configuration", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    return module


def documented_rows() -> list[tuple[str, str]]:
    rows = []
    for line in PAGE.read_text(encoding="utf-8").splitlines():
        match = ROW.match(line)
        if match is not None:
            rows.append((match["key"], match["default"]))

    return rows


def test_page_matches_generator() -> None:
    generated = load_generator().render()

    assert PAGE.read_text(encoding="utf-8") == generated, "docs/configuration.md is out of date: run python docs/gen_configuration.py"


def test_every_setting_has_one_row() -> None:
    keys = [key for key, _ in documented_rows()]
    fields = [field.name for field in dataclasses.fields(Settings)]

    assert sorted(keys) == sorted(fields)
    assert len(keys) == len(set(keys))


@pytest.mark.parametrize("key,default", documented_rows())
def test_documented_default_loads_as_default(tmp_path: Path, key: str, default: str) -> None:
    config_file = tmp_path / "config.yml"
    config_file.write_text(yaml.safe_dump({key: yaml.safe_load(default)}))

    loaded = load_settings(["--config", str(config_file)], environ={})

    assert getattr(loaded, key) == getattr(Settings(), key)
