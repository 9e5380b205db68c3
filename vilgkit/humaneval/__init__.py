"""Human evaluation campaigns: the paper's three protocols, rated in a browser, stored in SQLite.

``vilgkit humaneval create`` builds a campaign file from one run (or two, blind A/B) and a set of
inputs; ``vilgkit humaneval serve`` shows raters its items in random order; ``vilgkit humaneval
report`` computes the paper's tables with inter-rater agreement and confidence intervals. See
docs/serve.md.
"""

from __future__ import annotations

from vilgkit.humaneval.agreement import krippendorff_alpha
from vilgkit.humaneval.protocols import PROTOCOLS, Criterion, Protocol
from vilgkit.humaneval.store import Campaign, CampaignError

__all__ = [
    "PROTOCOLS",
    "Campaign",
    "CampaignError",
    "Criterion",
    "Protocol",
    "krippendorff_alpha",
]
