"""A 6-dimensional quadratic bowl with one integer and one categorical parameter, and noise: numpy's
random stream is seeded by the platform before every evaluation, so the same point in the same slot of
a study gives the same loss for every team (common random numbers). Minimum 0 without noise; the noise
is non-negative, so 0 is the optimum."""

import numpy as np

api_config = {
    "lr": {"type": "real", "space": "log", "range": (1e-4, 1.0)},
    "momentum": {"type": "real", "space": "logit", "range": (0.01, 0.99)},
    "width": {"type": "int", "space": "linear", "range": (1, 64)},
    "depth": {"type": "int", "space": "linear", "range": (1, 8)},
    "dropout": {"type": "real", "space": "linear", "range": (0.0, 0.9)},
    "activation": {"type": "cat", "values": ["relu", "tanh", "gelu"]},
}
optimum = 0.0
_PENALTY = {"relu": 0.0, "tanh": 0.3, "gelu": 0.1}


def evaluate(params: dict) -> float:
    centre = np.array([np.log10(0.01), 0.9, 32, 4, 0.2])
    scale = np.array([1.0, 0.3, 16, 2, 0.3])
    x = np.array(
        [np.log10(params["lr"]), params["momentum"], params["width"], params["depth"], params["dropout"]]
    )
    bowl = float(np.sum(((x - centre) / scale) ** 2)) + _PENALTY[params["activation"]]
    return bowl + float(np.random.exponential(0.05))
