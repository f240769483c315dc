"""Who may talk to whom: default deny, one decision function.

The policy is a set of directed pairs. A pair not in the set is refused, and a
recipient that does not exist gets exactly the same refusal, so probing for
names learns nothing. A pair may name another relay's agent (``bob@h2``) on one
side: this relay decides for its own side only; the other relay decides again.
"""

from __future__ import annotations

from collections.abc import Iterable, Set
from dataclasses import dataclass

from ccc_relay.policy.config import Rule

ALLOW = "allow"
HOLD = "hold"


@dataclass(frozen=True, slots=True)
class Policy:
    pairs: dict[tuple[str, str], str]

    @classmethod
    def from_rules(cls, rules: Iterable[Rule]) -> Policy:
        pairs: dict[tuple[str, str], str] = {}
        for rule in rules:
            # hold is the stricter of the two and wins when both are declared.
            if pairs.get((rule.sender, rule.recipient)) != HOLD:
                pairs[(rule.sender, rule.recipient)] = rule.action
        return cls(pairs)

    def action(self, sender: str, recipient: str, known: Set[str]) -> str | None:
        """``allow``/``hold`` when sender may send to recipient, else None. An
        address with ``@`` is another relay's agent: only its rule is asked."""
        if (sender in known or "@" in sender) and (recipient in known or "@" in recipient):
            return self.pairs.get((sender, recipient))
        return None

    def may_send(self, sender: str, recipient: str, known: Set[str]) -> bool:
        return self.action(sender, recipient, known) is not None

    def peers_of(self, agent: str, known: Set[str]) -> list[tuple[str, bool, bool]]:
        """Agents ``agent`` may talk to: (name, may_send_to_it, may_receive_from_it)."""
        names = {r for (s, r) in self.pairs if s == agent} | {
            s for (s, r) in self.pairs if r == agent
        }
        return sorted(
            (name, (agent, name) in self.pairs, (name, agent) in self.pairs)
            for name in names
            if name in known and name != agent
        )
