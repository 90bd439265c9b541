"""dhps: Python client of the dhps parameter server (over libdhps.so.0 with cffi).

    import dhps
    with dhps.Client(cluster="dhps-cluster") as c:
        values, missing = c.lookup("emb", keys)          # [n, dim] float32, bool [n]

See docs/python.md."""

from .client import Client, TableInfo
from .errors import (AuthError, ConfigError, Error, MovedError, NotFoundError,
                     NotReadyError, TimeoutError, UnreachableError)
from . import errors, tablefile

__all__ = ["Client", "TableInfo", "Error", "TimeoutError", "NotReadyError",
           "UnreachableError", "NotFoundError", "MovedError", "AuthError", "ConfigError",
           "errors",
           "tablefile"]
__version__ = "0.1.0"
