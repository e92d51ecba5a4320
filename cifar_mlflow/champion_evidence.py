"""Whether a sweep's best trial replaces the registered champion, and the evidence for it.

With at least two seeds of each setting, the challenger's setting must beat the champion's
with the 95 % interval (Welch) of its lead in `best_valid_acc` above `min_delta`: a lead
smaller than the seed-to-seed noise leaves the alias where it is. With one seed on either side
no interval exists, so the single runs are compared as before issue 24, and the decision says
so. Pure: the registry gathers the accuracies and records `tags()` on the new version.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cifar_mlflow import schema
from cifar_mlflow.evidence import Difference, welch


@dataclass(frozen=True)
class ChampionDecision:
    moves: bool
    lead: Difference  # challenger's setting minus champion's, over their seeds
    min_delta: float
    champion_value: float  # the champion's own best_valid_acc
    challenger_value: float  # the challenger run's own best_valid_acc

    @classmethod
    def decide(
        cls,
        champion: Sequence[float],
        challenger: Sequence[float],
        min_delta: float = 0.0,
        champion_value: float | None = None,
        challenger_value: float | None = None,
    ) -> ChampionDecision:
        """`champion`/`challenger`: best_valid_acc of every seed of each one's setting."""
        kept = max(champion) if champion_value is None else champion_value
        new = max(challenger) if challenger_value is None else challenger_value
        lead = welch(challenger, champion)
        moves = lead.low > min_delta if lead.testable else new > kept
        return cls(moves, lead, min_delta, kept, new)

    def seeds(self) -> str:
        return f"challenger {self.lead.seeds_a}, champion {self.lead.seeds_b}"

    def __str__(self) -> str:
        lead = self.lead
        if not lead.testable:
            return (
                f"{schema.METRIC_BEST_VALID_ACC} {self.champion_value:.4f}; this sweep's best: "
                f"{self.challenger_value:.4f}; {lead.untestable_reason}, single runs compared"
            )
        verdict = "above" if self.moves else "not above"
        return (
            f"the challenger's lead {lead.difference * 100:+.2f} points, 95 % CI "
            f"{lead.low * 100:.2f} to {lead.high * 100:.2f}, is {verdict} "
            f"{self.min_delta * 100:g} points; seeds: {self.seeds()}"
        )

    def tags(self) -> dict[str, str]:
        """The evidence, as tags of the version it chose."""
        tags = {
            schema.TAG_EVIDENCE_DIFFERENCE: str(self.lead.difference),
            schema.TAG_EVIDENCE_SEEDS: self.seeds(),
            schema.TAG_EVIDENCE: str(self),
        }
        if self.lead.testable:
            tags[schema.TAG_EVIDENCE_CI_LOW] = str(self.lead.low)
            tags[schema.TAG_EVIDENCE_CI_HIGH] = str(self.lead.high)
        return tags
