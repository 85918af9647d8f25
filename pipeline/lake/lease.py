"""A commit lease: at most one writer works on a batch's files at a time.

The manifest's conditional create already makes sure only one writer commits a seq; the lease
keeps a second writer from overwriting the first one's data parts before that. Leases live under
`state/<dataset>/<seq>/lease-<generation>.json`, each created with a conditional create, so of two
writers taking over an expired lease only one gets the next generation. The holder renews its
lease while it works; a writer killed mid-way leaves a lease that expires after `ttl` seconds,
and the next run waits for that instead of failing.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pipeline.core.records import LEASE
from pipeline.errors import AlreadyExists, ServiceUnavailable
from pipeline.lake import layout
from pipeline.lake.records import read_record
from pipeline.lake.storage import Lake


class LeaseBusy(ServiceUnavailable):
    """Another writer holds the batch; retrying later helps."""


@dataclass
class Lease:
    lake: Lake
    dataset: str
    seq: int
    ttl: float
    generation: int = -1
    owner: str = field(default_factory=lambda: uuid.uuid4().hex)
    renewed: float = 0.0

    def _key(self, generation: int) -> str:
        return layout.lease(self.dataset, self.seq, generation)

    def _latest(self) -> tuple[int, dict[str, Any] | None]:
        found = (layout.lease_generation(o.key) for o in self.lake.list(layout.leases(self.dataset, self.seq)))
        generations = [g for g in found if g is not None]
        if not generations:
            return -1, None
        latest = max(generations)
        return latest, read_record(self.lake, self._key(latest), LEASE)

    def _body(self, expires_at: float | None = None) -> bytes:
        return LEASE.dump({"owner": self.owner, "expires_at": time.time() + self.ttl if expires_at is None else expires_at})

    def acquire(self, wait: float | None = None) -> Lease:
        """Take the lease, waiting up to `wait` seconds (default: one ttl) for a holder to expire."""
        deadline = time.monotonic() + (self.ttl + 5 if wait is None else wait)
        while True:
            latest, body = self._latest()
            if body is None or float(body["expires_at"]) < time.time():
                try:
                    self.lake.create(self._key(latest + 1), self._body())
                    self.generation, self.renewed = latest + 1, time.monotonic()
                    return self
                except AlreadyExists:
                    pass  # another writer took that generation first
            if time.monotonic() > deadline:
                raise LeaseBusy(f"{self.dataset} batch {self.seq} is being committed by another writer")
            time.sleep(min(1.0, self.ttl / 10))

    def renew(self) -> None:
        """Extend the lease (at most every ttl/4 seconds); raise LeaseBusy if it was taken over."""
        if time.monotonic() - self.renewed < self.ttl / 4:
            return
        self.check()
        self.lake.write(self._key(self.generation), self._body())
        self.renewed = time.monotonic()

    def release(self) -> None:
        """Let the next writer in at once (a killed writer's lease just expires)."""
        if self.generation >= 0:
            try:
                self.check()
            except LeaseBusy:
                return
            self.lake.write(self._key(self.generation), self._body(expires_at=0))

    def check(self) -> None:
        """Raise LeaseBusy unless this writer still holds the latest lease and it has not expired
        (once expired, another writer may take it over at any moment)."""
        latest, body = self._latest()
        if latest != self.generation or body is None or body.get("owner") != self.owner:
            raise LeaseBusy(f"{self.dataset} batch {self.seq}: the commit lease passed to another writer")
        if float(body["expires_at"]) < time.time():
            raise LeaseBusy(f"{self.dataset} batch {self.seq}: this writer's commit lease expired; it stops")

    def fence(self, committed: Callable[[], bool]) -> None:
        """Before each write of the batch's files: this writer still holds its lease, and the
        batch is not committed (by anyone). A writer that stalled past its lease stops here."""
        self.check()
        if committed():
            raise LeaseBusy(f"{self.dataset} batch {self.seq} is committed; this writer stops")
