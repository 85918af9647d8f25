"""A commit lease: at most one writer works on a batch's files at a time.

The manifest's conditional create already makes sure only one writer commits a seq; the lease
keeps a second writer from overwriting the first one's data parts before that. Leases live under
`state/<dataset>/<seq>/lease-<generation>.json`, each created with a conditional create, so of two
writers taking over an expired lease only one gets the next generation. The holder renews its
lease while it works; a writer killed mid-way leaves a lease that expires after `ttl` seconds,
and the next run waits for that instead of failing.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field

from pipeline import layout
from pipeline.errors import AlreadyExists, ServiceUnavailable
from pipeline.storage import Lake


class LeaseBusy(ServiceUnavailable):
    """Another writer holds the batch; retrying later helps."""


def _prefix(dataset: str, seq: int) -> str:
    return f"state/{dataset}/{layout.seq_part(seq)}/lease-"


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
        return f"{_prefix(self.dataset, self.seq)}{generation:08d}.json"

    def _latest(self) -> tuple[int, dict[str, object] | None]:
        generations = [int(o.key.rsplit("-", 1)[1][:8]) for o in self.lake.list(_prefix(self.dataset, self.seq))]
        if not generations:
            return -1, None
        latest = max(generations)
        return latest, json.loads(self.lake.read(self._key(latest)))

    def _body(self) -> bytes:
        return json.dumps({"format": "anchorlake.lease/1", "owner": self.owner,
                           "expires_at": time.time() + self.ttl}).encode()

    def acquire(self, wait: float | None = None) -> Lease:
        """Take the lease, waiting up to `wait` seconds (default: one ttl) for a holder to expire."""
        deadline = time.monotonic() + (self.ttl + 5 if wait is None else wait)
        while True:
            latest, body = self._latest()
            if body is None or float(body["expires_at"]) < time.time():  # type: ignore[arg-type]
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
            self.lake.write(self._key(self.generation), json.dumps(
                {"format": "anchorlake.lease/1", "owner": self.owner, "expires_at": 0}).encode())

    def check(self) -> None:
        latest, body = self._latest()
        if latest != self.generation or body is None or body.get("owner") != self.owner:
            raise LeaseBusy(f"{self.dataset} batch {self.seq}: the commit lease passed to another writer")
