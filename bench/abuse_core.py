"""The pure parts of ``python -m bench.abuse``: attacks, verdicts, the table and the RESULT line.

An attack is two steps. ``launch(ctx)`` does the hostile thing (HTTP requests,
broker messages) and returns a ``Judge``; the runner calls every judge once the
stack has settled (normal load stored, queue drained), because most refusals
can only be seen after the worker had its say: a dead letter with its reason,
no row stored, no partition created, no foreign task run. Each attack states
what it tries and the refusal it expects; its verdict says what happened and
whether that was the expected refusal, with no side effect. Nothing here
touches the stack, so the registry and the figures are unit-tested alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

Channel = Literal["http", "broker"]

# Targets: at least this many distinct attacks, and the web process's memory growth over them bounded.
TARGET_MIN_ATTACKS = 25
TARGET_MAX_WEB_RSS_GROWTH_MB = 20.0


@dataclass(frozen=True)
class Verdict:
    """What one attack achieved: refused as expected (and with no side effect) or not."""

    refused: bool
    happened: str
    cross_tenant_effects: int = 0  # rows written into, read from or suppressed in another tenant


Judge = Callable[[], Verdict]


@dataclass(frozen=True)
class Attack:
    name: str
    channel: Channel
    tries: str
    expected: str
    launch: Callable[[Any], Judge]  # (AttackContext) -> Judge, run after the stack settled
    before_load: bool = False  # launched (and its effect stored) before the normal load starts


REGISTRY: dict[str, Attack] = {}


def attack(
    name: str, channel: Channel, tries: str, expected: str, *, before_load: bool = False
) -> Callable[[Callable[[Any], Judge]], Callable[[Any], Judge]]:
    """Register ``launch`` under ``name``; a name is registered once (the catalogue is distinct attacks)."""

    def register(launch: Callable[[Any], Judge]) -> Callable[[Any], Judge]:
        if name in REGISTRY:
            raise ValueError(f"attack {name!r} registered twice")
        REGISTRY[name] = Attack(name, channel, tries, expected, launch, before_load)
        return launch

    return register


@dataclass
class Tally:
    """Responses of one attack's requests: 5xx are server errors whatever the attack."""

    server_errors: int = 0
    statuses: list[int] = field(default_factory=list)

    def saw(self, status: int) -> None:
        self.statuses.append(status)
        if status >= 500:
            self.server_errors += 1


@dataclass(frozen=True)
class AttackResult:
    attack: Attack
    verdict: Verdict
    server_errors: int


def failed_to_run(exc: BaseException) -> Verdict:
    """An attack whose own code failed is reported as not refused, never as a crash of the run."""
    return Verdict(refused=False, happened=f"runner error: {type(exc).__name__}: {exc}"[:300])


@dataclass(frozen=True)
class Figures:
    attacks: int
    refused: int
    server_errors: int
    cross_tenant_effects: int
    normal_lost: int
    normal_duplicated: int
    partitions_created_by_attacks: int
    max_web_rss_growth_mb: float

    def targets(self) -> list[tuple[str, str, str, bool]]:
        """(figure, measured, target, met) in the RESULT line's order."""
        return [
            ("attacks", str(self.attacks), f">= {TARGET_MIN_ATTACKS}", self.attacks >= TARGET_MIN_ATTACKS),
            ("refused", str(self.refused), f"== attacks ({self.attacks})", self.refused == self.attacks),
            ("server_errors", str(self.server_errors), "== 0", self.server_errors == 0),
            ("cross_tenant_effects", str(self.cross_tenant_effects), "== 0", self.cross_tenant_effects == 0),
            ("normal_lost", str(self.normal_lost), "== 0", self.normal_lost == 0),
            ("normal_duplicated", str(self.normal_duplicated), "== 0", self.normal_duplicated == 0),
            ("partitions_created_by_attacks", str(self.partitions_created_by_attacks), "== 0",
             self.partitions_created_by_attacks == 0),
            ("max_web_rss_growth_mb", f"{self.max_web_rss_growth_mb:.1f}", f"<= {TARGET_MAX_WEB_RSS_GROWTH_MB:g}",
             self.max_web_rss_growth_mb <= TARGET_MAX_WEB_RSS_GROWTH_MB),
        ]  # fmt: skip

    def all_met(self) -> bool:
        return all(met for *_, met in self.targets())

    def result_line(self) -> str:
        return (
            f"RESULT attacks={self.attacks} refused={self.refused} server_errors={self.server_errors}"
            f" cross_tenant_effects={self.cross_tenant_effects} normal_lost={self.normal_lost}"
            f" normal_duplicated={self.normal_duplicated}"
            f" partitions_created_by_attacks={self.partitions_created_by_attacks}"
            f" max_web_rss_growth_mb={self.max_web_rss_growth_mb:.1f}"
        )


def figures(
    results: list[AttackResult], *, extra_server_errors: int, extra_cross_tenant: int, normal_lost: int,
    normal_duplicated: int, partitions_created_by_attacks: int, max_web_rss_growth_mb: float,
) -> Figures:  # fmt: skip
    """The run's figures from the attacks' verdicts and what the runner measured beside them."""
    return Figures(
        attacks=len(results),
        refused=sum(r.verdict.refused for r in results),
        server_errors=sum(r.server_errors for r in results) + extra_server_errors,
        cross_tenant_effects=sum(r.verdict.cross_tenant_effects for r in results) + extra_cross_tenant,
        normal_lost=normal_lost,
        normal_duplicated=normal_duplicated,
        partitions_created_by_attacks=partitions_created_by_attacks,
        max_web_rss_growth_mb=max_web_rss_growth_mb,
    )


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=False)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=False)).rstrip()
        for line in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def attack_table(results: list[AttackResult]) -> str:
    rows = [
        (r.attack.name, r.attack.channel, r.attack.tries, r.attack.expected,
         r.verdict.happened + (f" [{r.server_errors} server error(s)]" if r.server_errors else ""),
         "yes" if r.verdict.refused else "NO")
        for r in results
    ]  # fmt: skip
    return _table(("attack", "via", "tries", "expected refusal", "what happened", "refused"), rows)


def targets_table(figs: Figures) -> str:
    rows = [(name, measured, target, "met" if met else "MISSED") for name, measured, target, met in figs.targets()]
    return _table(("figure", "measured", "target", "verdict"), rows)
