"""Built-in vilgkit plugin: parallel strategies (single device, DDP, FSDP2, FairScale FSDP)."""
from vilgkit_parallel import single  # noqa: F401
