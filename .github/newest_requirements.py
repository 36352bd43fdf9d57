"""Print pyproject.toml's dependencies (and test/lint extras) without their ceilings, one per line.

Used by .github/workflows/newest.yml to install the newest release of everything synapse depends on.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

project = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())["project"]
requirements = [*project["dependencies"], *project["optional-dependencies"]["test"]]
requirements += project["optional-dependencies"]["lint"]
for requirement in requirements:
    # "name>=1.0,<2; marker" -> "name>=1.0; marker": the floor stays, the ceiling goes
    sys.stdout.write(re.sub(r",\s*<[^,;]*", "", requirement) + "\n")
