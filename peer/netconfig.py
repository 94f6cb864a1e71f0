"""Where a public swarm's bootstrap list comes from, so it is set once, not typed every time.

For ``--initial-peers`` and ``--relays``, the first of these that is set wins:

1. the flag on the command line;
2. the environment: ``SEEDSWARM_INITIAL_PEERS`` / ``SEEDSWARM_RELAYS`` (multiaddrs separated
   by spaces or commas);
3. the config file: ``$SEEDSWARM_CONFIG``, else ``$XDG_CONFIG_HOME/seedswarm/config.toml``
   (``~/.config/seedswarm/config.toml``)::

       initial_peers = ["/ip4/203.0.113.7/tcp/31337/p2p/12D3KooW..."]
       relays = ["/ip4/203.0.113.7/tcp/31337/p2p/12D3KooW...", "/dns4/relay2.example.org/tcp/31337/p2p/12D3KooW..."]
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path

ENV = {"initial_peers": "SEEDSWARM_INITIAL_PEERS", "relays": "SEEDSWARM_RELAYS"}
CONFIG_ENV = "SEEDSWARM_CONFIG"


class NetConfigError(ValueError):
    """A config file or environment variable that cannot be used; says which and why."""


def config_path(env: Mapping[str, str] = os.environ) -> Path:
    if env.get(CONFIG_ENV):
        return Path(env[CONFIG_ENV])
    base = env.get("XDG_CONFIG_HOME") or str(Path(env.get("HOME", "~")).expanduser() / ".config")
    return Path(base) / "seedswarm" / "config.toml"


def _addrs(values: object, where: str) -> list[str]:
    if not isinstance(values, list) or not all(isinstance(v, str) and v.startswith("/") for v in values):
        raise NetConfigError(f"{where} must be a list of multiaddrs (strings starting with /)")
    return list(values)


def load_config(path: Path) -> dict[str, list[str]]:
    """The network settings of a config file ({} if there is none)."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise NetConfigError(f"config file {str(path)!r}: {exc}") from None
    unknown = set(data) - set(ENV)
    if unknown:
        raise NetConfigError(f"config file {str(path)!r}: unknown setting(s) {sorted(unknown)}; known: {sorted(ENV)}")
    return {k: _addrs(v, f"config file {str(path)!r}: {k}") for k, v in data.items()}


def resolve(name: str, flag_value: list[str] | None, env: Mapping[str, str] = os.environ) -> tuple[list[str], str]:
    """(multiaddrs, where they came from) for ``name`` in ENV."""
    if flag_value is not None:
        return list(flag_value), "--" + name.replace("_", "-")
    raw = env.get(ENV[name], "").replace(",", " ").split()
    if raw:
        return _addrs(raw, ENV[name]), ENV[name]
    path = config_path(env)
    found = load_config(path).get(name)
    if found:
        return found, str(path)
    return [], ""
