"""A module that fails on import (for load error tests)."""

raise RuntimeError("this module is broken on purpose")
