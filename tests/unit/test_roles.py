"""Every role documents exactly the variables it has: argument_specs match
defaults/main.yml, every public variable carries the role's name, and the
role's README names each of them."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROLES = sorted(p for p in (Path(__file__).resolve().parents[2] / "roles").iterdir() if p.is_dir())


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_argument_specs_match_defaults(role):
    defaults = yaml.safe_load((role / "defaults" / "main.yml").read_text()) or {}
    specs = yaml.safe_load((role / "meta" / "argument_specs.yml").read_text())["argument_specs"]["main"]
    options = specs.get("options", {})
    assert set(defaults) == set(options), "defaults and argument_specs differ"
    assert all(name.startswith(role.name + "_") for name in options)


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_readme_names_every_variable(role):
    readme = (role / "README.md").read_text()
    options = yaml.safe_load((role / "meta" / "argument_specs.yml").read_text())["argument_specs"]["main"]["options"]
    missing = sorted(name for name in options if name not in readme)
    assert not missing, "README.md does not mention %s" % ", ".join(missing)
