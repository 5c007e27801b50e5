"""docs/architecture.md's layout table names exactly the modules of the four packages."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("actors", "learners", "replay", "system")


def test_the_layout_table_names_every_module_and_no_other():
    text = (ROOT / "docs" / "architecture.md").read_text()
    section = text.split("## Layout", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"^\| `([\w/]+\.py)` \|", section, flags=re.M))
    on_disk = {p.relative_to(ROOT).as_posix() for package in PACKAGES for p in (ROOT / package).rglob("*.py")
               if p.name != "__init__.py" or p.parent.name == "bench"}
    assert sorted(on_disk - named) == [], "modules missing from docs/architecture.md's layout table"
    assert sorted(named - on_disk) == [], "docs/architecture.md's layout table names modules that do not exist"
