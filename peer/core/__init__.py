"""The sans-IO swarm core: the rules of a peer as a pure state machine (see core.py).

Nothing in this package imports asyncio, hivemind or torch: the same core runs inside a
real peer (peer/node.py) and by the hundreds inside the simulator (peer/sim.py).
"""

from .core import JOIN_MODES, CoreConfig, SwarmCore, checkpoints_to_keep
from .events import *  # noqa: F401,F403  (the event and action types)

__all__ = ["JOIN_MODES", "CoreConfig", "SwarmCore", "checkpoints_to_keep"]
