"""Branin-Hoo on its usual box: three global minima, each 0.397887 (Dixon and Szego, 1978)."""

import math

api_config = {
    "x": {"type": "real", "space": "linear", "range": (-5.0, 10.0)},
    "y": {"type": "real", "space": "linear", "range": (0.0, 15.0)},
}
optimum = 0.39788735772973816


def evaluate(params: dict) -> float:
    x, y = params["x"], params["y"]
    b, c, t = 5.1 / (4 * math.pi**2), 5 / math.pi, 1 / (8 * math.pi)
    return (y - b * x**2 + c * x - 6) ** 2 + 10 * (1 - t) * math.cos(x) + 10
