"""Where state lives and how to reach Redis, from the environment."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

STATE_DIR_ENV = "BBO_STATE_DIR"
CACHE_DIR_ENV = "BBO_CACHE_DIR"
REDIS_URL_ENV = "BBO_REDIS_URL"
UNSAFE_SANDBOX_ENV = "BBO_ALLOW_UNSAFE_SANDBOX"


# Numerical libraries run one thread per job so that jobs on one machine do not fight over cores.
THREAD_ENV = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "NUMEXPR_NUM_THREADS": "1",
    "VECLIB_MAXIMUM_THREADS": "1",
}


def pin_threads() -> None:
    """Call before numpy is imported: the libraries read these once, when they load."""
    os.environ.update(THREAD_ENV)


def state_dir() -> Path:
    """The one folder for Redis data, artifacts, logs; never inside the source tree."""
    raw = os.environ.get(STATE_DIR_ENV)
    path = Path(raw).expanduser() if raw else Path.home() / ".local" / "state" / "bbo-arena"
    path.mkdir(parents=True, exist_ok=True)
    return path.resolve()


def cache_dir() -> Path:
    """Machine-level build products shared by every state folder: wheelhouse, image base, sandbox venv."""
    raw = os.environ.get(CACHE_DIR_ENV)
    path = Path(raw).expanduser() if raw else Path.home() / ".cache" / "bbo-arena"
    path.mkdir(parents=True, exist_ok=True)
    return path.resolve()


def embedded_redis_dir() -> Path:
    path = state_dir() / "redis"
    path.mkdir(parents=True, exist_ok=True)
    return path


def embedded_redis_socket() -> Path:
    path = embedded_redis_dir() / "redis.sock"
    # Unix socket paths are limited to 107 bytes; a deep state dir gets a short name derived from it.
    if len(str(path)) > 100:
        digest = hashlib.sha256(str(path).encode()).hexdigest()[:12]
        return Path("/tmp") / f"bbo-redis-{digest}.sock"
    return path


def configured_redis_url() -> str | None:
    """The deployment's Redis, or None for the embedded server."""
    url = os.environ.get(REDIS_URL_ENV, "").strip()
    return url or None


def redis_url() -> str:
    return configured_redis_url() or f"unix://{embedded_redis_socket()}"


def unsafe_sandbox_allowed() -> bool:
    return os.environ.get(UNSAFE_SANDBOX_ENV, "") in {"1", "true", "yes"}
