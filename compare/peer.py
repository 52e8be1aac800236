"""The interface every peer implementation offers to the comparison loop."""

from dataclasses import dataclass
from typing import Callable


class PeerUnavailable(Exception):
    """A peer cannot run this case: its package is missing, or it rejects the dtype or device."""


@dataclass
class Prepared:
    """One implementation set up for one case.

    `run` computes the op once and returns only when the result is complete (it synchronizes
    the device), so a wall clock around it times the op. `result` returns the last output as
    NumPy values: the output array, or (mean loss, dz) for the cross-entropy ops."""

    run: Callable[[], None]
    result: Callable[[], object]


@dataclass
class Peer:
    """An implementation of one op: `label` names it in tables (such as "torch.compile"),
    and `prepare(inputs)` returns a Prepared or raises PeerUnavailable."""

    label: str
    op: str
    prepare: Callable[[object], Prepared]
