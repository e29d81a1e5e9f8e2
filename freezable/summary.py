"""The freeze summary table that ``freeze_summary()`` prints."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["SummaryRow", "format_summary"]

_COLUMNS = ("group", "params", "trainable", "frozen", "norms in eval")


@dataclass(frozen=True)
class SummaryRow:
    """One row of the summary: a group, or the total."""

    name: str  # group name, or "total"
    params: int  # parameters (elements) in the group
    trainable: int  # of which have requires_grad=True
    norms_in_eval: int  # norm layers held at inference

    @property
    def frozen(self) -> int:
        return self.params - self.trainable


def format_count(n: int) -> str:
    """Parameter counts as people read them.

    Example:
        >>> format_count(999), format_count(12_345), format_count(25_557_032), format_count(1_500_000_000)
        ('999', '12.3K', '25.6M', '1.50B')
    """
    for size, suffix, digits in ((1e9, "B", 2), (1e6, "M", 1), (1e3, "K", 1)):
        if n >= size:
            return f"{n / size:.{digits}f}{suffix}"
    return str(n)


def format_summary(rows: Sequence[SummaryRow], total: SummaryRow) -> str:
    """Lays the rows and the total out as an aligned text table."""

    def cells(row: SummaryRow) -> list[str]:
        return [row.name, format_count(row.params), format_count(row.trainable), format_count(row.frozen),
                str(row.norms_in_eval)]

    table = [list(_COLUMNS)] + [cells(r) for r in rows] + [cells(total)]
    widths = [max(len(line[i]) for line in table) for i in range(len(_COLUMNS))]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(values, widths)))

    rule = line(["-" * w for w in widths])
    body = [line(table[0]), rule] + [line(c) for c in table[1:-1]] + [rule, line(table[-1])]
    share = 100 * total.trainable / total.params if total.params else 0.0
    body.append(f"trainable: {total.trainable:,} of {total.params:,} parameters ({share:.2f}%)")
    return "\n".join(body)
