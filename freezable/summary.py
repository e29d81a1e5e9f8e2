"""Text tables: the one layout of ``freeze_summary()`` and ``print(fz.check(...))``."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch.nn.parameter import is_lazy

__all__ = ["SummaryRow", "format_summary", "format_table", "format_count", "count_elements"]

_COLUMNS = ("group", "params", "trainable", "frozen", "norms in eval")


@dataclass(frozen=True)
class SummaryRow:
    """One row of the summary: a group, or the total."""

    name: str  # group name, or "total"
    params: int  # parameters (elements) in the group
    trainable: int  # of which have requires_grad=True
    norms_in_eval: int  # norm layers held at inference
    built_frozen: int = 0  # of which the model was built with frozen (they stay frozen through unfreeze)
    by_hand: int = 0  # of which were frozen outside freezable since (requires_grad=False set by hand)
    norms_not_held: int = 0  # norm layers with running statistics, every parameter frozen, not held: they drift

    @property
    def frozen(self) -> int:
        """Frozen by freezable."""
        return self.params - self.trainable - self.built_frozen - self.by_hand


def count_elements(tensors: Iterable[torch.Tensor]) -> int:
    """How many elements the tensors hold; a lazy module's parameters not materialised yet hold none.

    Example:
        >>> from torch import nn
        >>> count_elements(nn.Linear(3, 2).parameters()), count_elements(nn.LazyLinear(2).parameters())
        (8, 0)
    """
    return sum(0 if is_lazy(t) else t.numel() for t in tensors)


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


def format_table(
    header: Sequence[str], rows: Sequence[Sequence[str]], footer: Sequence[Sequence[str]] = (), right: Sequence[int] = ()
) -> str:
    """An aligned text table: header, rule, rows, and (after another rule) footer rows.

    Args:
        header: the column titles.
        rows: the body, one sequence of cells per row.
        footer: rows set off by a rule (a total).
        right: indices of the columns aligned right (numbers).

    Example:
        >>> print(format_table(("name", "n"), [("a", "1"), ("bb", "22")], footer=[("all", "23")], right=(1,)))
        name   n
        ----  --
        a      1
        bb    22
        ----  --
        all   23
    """
    table = [list(header)] + [list(r) for r in rows] + [list(r) for r in footer]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if i in right else v.ljust(w) for i, (v, w) in enumerate(zip(values, widths))).rstrip()

    rule = line(["-" * w for w in widths])
    body = [line(header), rule] + [line(r) for r in rows]
    if footer:
        body += [rule] + [line(r) for r in footer]
    return "\n".join(body)


def format_summary(rows: Sequence[SummaryRow], total: SummaryRow) -> str:
    """Lays the rows and the total out as an aligned text table.

    Parameters frozen, but not by freezable, are counted apart from ``frozen``, each kind in a column that
    appears when the total has any: ``built frozen`` and ``frozen by hand``; ``norms not held`` counts the
    norm layers with running statistics whose parameters are all frozen but which are not held (their
    statistics update in ``train()``).
    """
    extra = [(title, attr) for title, attr in (("built frozen", "built_frozen"), ("frozen by hand", "by_hand"),
                                               ("norms not held", "norms_not_held")) if getattr(total, attr)]
    columns = _COLUMNS + tuple(title for title, _ in extra)

    def cells(row: SummaryRow) -> list[str]:
        return [row.name, format_count(row.params), format_count(row.trainable), format_count(row.frozen),
                str(row.norms_in_eval)] + [
                    str(row.norms_not_held) if attr == "norms_not_held" else format_count(getattr(row, attr))
                    for _, attr in extra]

    table = format_table(columns, [cells(r) for r in rows], footer=[cells(total)], right=range(1, len(columns)))
    share = 100 * total.trainable / total.params if total.params else 0.0
    return table + f"\ntrainable: {total.trainable:,} of {total.params:,} parameters ({share:.2f}%)"
