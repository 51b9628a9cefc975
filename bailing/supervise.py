"""When a child of `bailing up` dies, start it again, after a backoff; give up only on a crash loop.

`RestartPolicy` decides (pure: times in, decisions out): a child that ran at least `stable_s` before it
died starts a new streak; each death within a streak doubles the wait (`first_delay_s`, 2x, 4x, ... at
most `max_delay_s`); the `max_streak`-th death in a row is a crash loop, and `bailing up` stops with
exit 1 and the child's log tail, as before supervision. `Stack.supervise` applies it to every child,
the embedded Valkey included (same port, same data directory: its AOF brings the data back).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ChildRecord:
    started_at: float = 0.0  # monotonic time of the last start
    streak: int = 0  # deaths in a row, each within stable_s of its start
    restarts: int = 0  # restarts in all
    restart_at: float | None = None  # when the pending restart is due; None: running


@dataclass
class RestartPolicy:
    first_delay_s: float = 1.0
    max_delay_s: float = 30.0
    stable_s: float = 60.0
    max_streak: int = 6
    records: dict[str, ChildRecord] = field(default_factory=dict)

    def started(self, name: str, now: float) -> None:
        record = self.records.setdefault(name, ChildRecord())
        record.started_at, record.restart_at = now, None

    def died(self, name: str, now: float) -> float | None:
        """The delay before `name` starts again, or None: a crash loop, stop supervising."""
        record = self.records.setdefault(name, ChildRecord())
        record.streak = 1 if now - record.started_at >= self.stable_s else record.streak + 1
        if record.streak >= self.max_streak:
            return None
        delay = min(self.max_delay_s, self.first_delay_s * 2 ** (record.streak - 1))
        record.restart_at = now + delay
        record.restarts += 1
        return delay

    def due(self, name: str, now: float) -> bool:
        record = self.records.get(name)
        return record is not None and record.restart_at is not None and now >= record.restart_at

    def waiting(self, name: str) -> bool:
        record = self.records.get(name)
        return record is not None and record.restart_at is not None

    def restarts(self) -> dict[str, int]:
        return {name: r.restarts for name, r in self.records.items() if r.restarts}
