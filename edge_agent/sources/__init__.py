"""Reading sources: each turns outside input into validated `Reading`s for the pipeline.

`base` holds the `Intake`/`Source` interfaces and the door (validation and reject accounting);
one module per system a source talks to: `socket`, `stdin`, `mqtt` (the gateway's local broker)
and `modbus` (meters polled over Modbus TCP).
"""

from edge_agent.sources.base import Intake, Source

__all__ = ["Intake", "Source"]
