"""Online A/B experiments: a share of the traffic answered by the ``challenger`` stack instead of the champion.

The offline gate decides promotion; an experiment adds what only production can tell (do users rate the
challenger's answers up as often, does it abstain or trip guardrails more, is it slower or dearer). The running
experiment is one JSON tag on the registered model ``rag-stack`` (:data:`EXPERIMENT_TAG`), so every replica of the
service that reads the registry sees the same experiment, and stopping it is one write.

Arms are assigned by hashing the experiment id with the caller's identity (tenant and key name): no state to share
between replicas, the same caller always lands on the same arm for the whole experiment (sticky), and a new
experiment reshuffles callers. A caller without identity (authentication off: every request is the local operator)
is one caller, so all of its traffic takes one arm.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Literal

from rag.errors import BadQuery

Arm = Literal["champion", "challenger"]
ARMS: tuple[Arm, Arm] = ("champion", "challenger")
EXPERIMENT_TAG = "ab_experiment"
"""Registered-model tag holding the running experiment's JSON (empty when none runs)."""
RESULT_TAG = "ab_result"
"""Model-version tag on the challenger holding the experiment's latest result JSON (``ab_status`` its verdict)."""
STATUS_TAG = "ab_status"

_SCALE = float(2**64)


@dataclass(frozen=True)
class Experiment:
    """One running experiment.

    ``share``: fraction of callers (not requests) sent to the challenger; ``alpha``: significance level of the
    monitor's always-valid tests; ``started_at``: epoch seconds (the analysis window starts there).
    """

    id: str
    champion: int
    challenger: int
    share: float
    alpha: float
    started_at: float
    started_by: str

    def __post_init__(self) -> None:
        if not 0.0 < self.share < 1.0:
            raise BadQuery(f"the challenger's share of traffic must be between 0 and 1 (exclusive), got {self.share}")
        if not 0.0 < self.alpha < 0.5:
            raise BadQuery(f"the significance level must be between 0 and 0.5, got {self.alpha}")
        if self.champion == self.challenger:
            raise BadQuery(f"stack v{self.challenger} is the champion; an experiment needs another version")

    def arm(self, identity: str) -> Arm:
        """The arm of the caller ``identity`` (stable for the experiment's life, uniform over callers)."""
        digest = hashlib.sha256(f"{self.id}\x00{identity}".encode()).digest()
        return "challenger" if int.from_bytes(digest[:8], "big") / _SCALE < self.share else "champion"

    def version(self, arm: Arm) -> int:
        """The stack version serving ``arm``."""
        return self.challenger if arm == "challenger" else self.champion

    def to_json(self) -> str:
        """The registry tag's value."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, raw: str) -> Experiment:
        """Read the registry tag (``ValueError`` when it is not an experiment)."""
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("an experiment tag holds a JSON object")
        return cls(
            id=str(data["id"]),
            champion=int(data["champion"]),
            challenger=int(data["challenger"]),
            share=float(data["share"]),
            alpha=float(data["alpha"]),
            started_at=float(data["started_at"]),
            started_by=str(data["started_by"]),
        )
