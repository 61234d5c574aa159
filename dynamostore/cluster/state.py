"""The cluster as this node serves it: the ring, N, the ring epoch, the committed membership and every
member's address (the real `views.Placement`).

It changes only when the membership service publishes a newly applied state (`apply`); listeners hear
of it in registration order (the node registers itself first, to watch new peers, then the services).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from ring.membership import MemberInfo, MembershipState, Status
from ring.placement import Ring

log = logging.getLogger(__name__)


class ClusterState:
    def __init__(self, node_id: str, addresses: dict[str, MemberInfo], ring: Ring | None, n_val: int,
                 epoch: int) -> None:
        self.node_id = node_id
        self.addresses = addresses  # every node this one may talk to (members, joiners, itself)
        self._ring = ring
        self._n_val = n_val
        self.epoch = epoch
        self._state = MembershipState()
        self.listeners: list[Callable[[MembershipState], None]] = []

    @property
    def ring(self) -> Ring | None:
        return self._ring

    @property
    def n_val(self) -> int:
        return self._n_val

    @property
    def state(self) -> MembershipState:
        return self._state

    def members(self) -> list[str]:
        st = self._state
        if st.initialized:
            return st.live_members()
        return sorted(self.addresses)

    def status_of(self, node: str) -> Status | None:
        m = self._state.members.get(node)
        return m.status if m is not None else None

    def apply(self, state: MembershipState) -> None:
        """A newly applied committed membership: ring, N, epoch, addresses; then tell the listeners."""
        self._state = state
        self._ring = state.ring
        self._n_val = state.n_val
        if state.epoch != self.epoch:
            log.info("ring epoch %d -> %d", self.epoch, state.epoch)
        self.epoch = state.epoch
        for mid, info in state.members.items():
            self.addresses[mid] = info
        for fn in self.listeners:
            fn(state)
