"""Background jobs of the channel layer (discovered by runleader through the job registry)."""

from __future__ import annotations

from apps.coordination.fencing import Tick
from apps.coordination.registry import job
from apps.pglayer.expiry import collect_expired


@job(name="channel_layer_gc", every=60)
def channel_layer_gc(tick: Tick) -> None:
    """Delete expired channel-layer messages and group memberships."""
    collect_expired(tick)
