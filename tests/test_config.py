"""config/config.yaml, the schema and slidemil.config's dataclasses (the only place a default lives) agree."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest
import yaml

from slidemil.config import (Config, EncoderSpec, HNMParams, PretrainParams, from_block, load_config,
                             with_defaults)

ROOT = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((ROOT / "config/config.yaml").read_text())
SCHEMA = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())
# entries of named-entry blocks are examples, not defaults: the keys where config.yaml's entry chooses
# its own value (every other key must equal the dataclass default)
ENTRIES = {"encoders": (EncoderSpec, {"name", "depth", "input_size"}),
           "pretrain": (PretrainParams, {"sampler", "depth", "input_size", "epochs", "tiles_per_epoch"}),
           "hnm": (HNMParams, {"base", "enabled"})}


def _default(f: dataclasses.Field) -> object:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _blocks(cls: type, data: dict, schema: dict, path: str):
    """(dataclass, config.yaml's block, schema node, dotted path) of every block, nested ones included."""
    yield cls, data, schema, path
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        sub = schema["properties"].get(f.name, {})
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _blocks(hints[f.name], data.get(f.name, {}), sub, f"{path}.{f.name}")
        elif f.name in ENTRIES:
            entry_cls, _ = ENTRIES[f.name]
            first = data[f.name][0] if isinstance(data[f.name], list) else next(iter(data[f.name].values()))
            entry_schema = sub["items"] if "items" in sub else sub["additionalProperties"]
            yield from _blocks(entry_cls, first, entry_schema, f"{path}.{f.name}[]")


BLOCKS = list(_blocks(Config, CONFIG, SCHEMA, "config"))


@pytest.mark.parametrize("cls,data,schema,path", BLOCKS, ids=[b[3] for b in BLOCKS])
def test_config_yaml_the_schema_and_the_dataclass_name_the_same_keys(cls, data, schema, path):
    fields = {f.name for f in dataclasses.fields(cls)}
    assert set(data) == fields, f"{path}: config.yaml lacks {sorted(fields - set(data))}, has extra {sorted(set(data) - fields)}"
    assert set(schema["properties"]) == fields, f"{path}: schema differs by {sorted(set(schema['properties']) ^ fields)}"


@pytest.mark.parametrize("cls,data,schema,path", BLOCKS, ids=[b[3] for b in BLOCKS])
def test_every_config_yaml_value_is_the_dataclass_default(cls, data, schema, path):
    chosen = next((keys for name, (_, keys) in ENTRIES.items() if path.endswith(f".{name}[]")), set())
    for f in dataclasses.fields(cls):
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            continue  # required (samples, classes, encoders, an hnm run's base)
        if f.name in chosen or dataclasses.is_dataclass(_default(f)) or f.name in ENTRIES or f.name == "models":
            continue  # examples, nested blocks (checked on their own) and MIL runs (the registry's parameters)
        assert data[f.name] == _default(f), f"{path}.{f.name}: config.yaml {data[f.name]!r} != default {_default(f)!r}"


def test_the_schema_gives_no_defaults():
    assert "default:" not in (ROOT / "workflow/schemas/config.schema.yaml").read_text()


def test_filling_defaults_leaves_config_yaml_as_it_is():
    assert with_defaults(CONFIG) == CONFIG


def test_an_unknown_key_names_its_block_and_the_known_keys():
    with pytest.raises(ValueError, match=r"config tile: unknown keys \['tile_sise'\]; known: \[.*'tile_size'"):
        load_config({**CONFIG, "tile": {"tile_sise": 32}})
    with pytest.raises(ValueError, match=r"config evaluate.froc: unknown keys \['merge'\]"):
        load_config({**CONFIG, "evaluate": {"froc": {"merge": 1}}})
    with pytest.raises(ValueError, match=r"config pretrain.x: unknown keys \['epoch'\]"):
        load_config({**CONFIG, "pretrain": {"x": {"epoch": 1}}})
    with pytest.raises(ValueError, match=r"config encoders\[0\]: unknown keys \['batch'\]"):
        load_config({**CONFIG, "encoders": [{"name": "e", "batch": 4}]})
    with pytest.raises(ValueError, match="hnm neg_ratio"):
        load_config({**CONFIG, "hnm": {"h": {"base": "e", "neg_ratio": 0}}})


def test_a_partial_block_takes_the_dataclass_defaults():
    from slidemil.config import TileParams

    assert from_block(TileParams, {"tile_size": 32}, "tile") == TileParams(tile_size=32)
    assert load_config({"samples": "s.tsv", "classes": ["a", "b"], "encoders": []}).mil.lr == CONFIG["mil"]["lr"]
