"""bbob problem names: `f{F}-i{I}-d{D}`, COCO's function F (1..24), instance I, dimension D.

Standard library only: the worker checks names with it without starting a process, and the objective
server (in the bbob environment, where the project is not installed) loads it by path.
"""

from __future__ import annotations

import re
from typing import NamedTuple

FUNCTIONS = range(1, 25)
DIMENSIONS = (2, 3, 5, 10, 20, 40)  # the ones COCO's bbob suite defines
# COCO derives each instance's seed from its number; the range is bounded so the number stays a small
# integer on every platform (instances up to this were checked: optimum found, within bounds).
MAX_INSTANCE = 999_999

# Canonical numbers only (no leading zeros), so that a problem has one name.
_PATTERN = re.compile(r"f([1-9][0-9]{0,5})-i([1-9][0-9]{0,8})-d([1-9][0-9]{0,5})")


class BbobName(NamedTuple):
    function: int
    instance: int
    dimension: int


def parse(local: str) -> BbobName:
    """The parts of a local name, or ValueError with a one-line reason."""
    match = _PATTERN.fullmatch(local)
    if match is None:
        raise ValueError(f"{local!r} is not a bbob problem name (f{{1..24}}-i{{instance}}-d{{dimension}})")
    name = BbobName(*(int(part) for part in match.groups()))
    if name.function not in FUNCTIONS:
        raise ValueError(f"bbob has functions 1 to 24, not {name.function}")
    if name.instance > MAX_INSTANCE:
        raise ValueError(f"bbob instances here are 1 to {MAX_INSTANCE}, not {name.instance}")
    if name.dimension not in DIMENSIONS:
        raise ValueError(f"bbob has dimensions {', '.join(map(str, DIMENSIONS))}, not {name.dimension}")
    return name


def local_name(function: int, instance: int, dimension: int) -> str:
    return f"f{function}-i{instance}-d{dimension}"
