"""Freeze-D (Mo et al., 2020), one mechanism for every STGAN discriminator.

A discriminator that mixes in :class:`FreezeDMixin` lists its trainable blocks as ordered chains
(:meth:`FreezeDMixin.freeze_d_chains`: ``(name prefix, blocks)`` pairs, shallow to deep). Freeze-D
with ``k`` fixes the first ``k`` blocks of every chain (a chain with fewer has all of them fixed):
the projected D has one chain per scale (``discs.<i>.blocks``), the FastGAN D one down path
(``blocks``). Fixed parameters stay fixed through ``requires_grad_`` (a training loop toggling D's
gradients must not thaw them) together with the parts a D keeps fixed anyway (its frozen feature
network, random projections), and :meth:`trainable_parameters` leaves them out of the optimiser.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from torch import nn

from dermagan.errors import DermaganError


class FreezeDMixin:
    """Freeze-D for an ``nn.Module`` discriminator (list the mixin before ``nn.Module``).

    The class sets ``freeze_d_kind`` (its name in errors), implements :meth:`freeze_d_chains` and
    calls :meth:`keep_frozen` in ``__init__`` with the parameter names it never trains.
    """

    freeze_d_kind = "this"

    def freeze_d_chains(self) -> list[tuple[str, Iterable[nn.Module]]]:
        """``(prefix, blocks)`` of each chain of trainable blocks; block ``j``'s parameters are ``prefix.j.*``."""
        raise NotImplementedError

    def keep_frozen(self, names: Iterable[str]) -> None:
        """Add parameter names that stay fixed whatever ``requires_grad_`` is asked."""
        if not hasattr(self, "_frozen"):
            self._frozen: set[str] = set()
        self._frozen.update(names)

    def num_blocks(self) -> int:
        """The most blocks any chain has: the largest useful Freeze-D ``k``."""
        return max(len(list(blocks)) for _, blocks in self.freeze_d_chains())

    def freeze_blocks(self, k: int) -> list[str]:
        """Fix the first ``k`` blocks of every chain; return the names of the parameters fixed here.

        Call before building the optimiser over :meth:`trainable_parameters`.
        """
        if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k <= self.num_blocks():
            raise DermaganError(f"params: freeze_d_blocks must be an integer in 0..{self.num_blocks()} "
                                f"for this {self.freeze_d_kind} discriminator, got {k!r}")
        names = []
        for prefix, blocks in self.freeze_d_chains():
            for j, block in enumerate(list(blocks)[:k]):
                for pname, param in block.named_parameters():
                    param.requires_grad_(False)
                    names.append(f"{prefix}.{j}.{pname}")
        self.keep_frozen(names)
        return names

    def requires_grad_(self, requires_grad: bool = True):
        """Like ``nn.Module.requires_grad_``, but the parts kept frozen and the Freeze-D blocks stay fixed."""
        frozen = getattr(self, "_frozen", set())
        for name, param in self.named_parameters():
            param.requires_grad_(requires_grad and name not in frozen)
        return self

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """The parameters the optimiser gets: everything not kept frozen or fixed by Freeze-D."""
        return (p for p in self.parameters() if p.requires_grad)
