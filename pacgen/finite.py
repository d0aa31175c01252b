"""Never an image made of NaN or infinity: the sampler notes which UNet rows first went non-finite, and refuses to
decode latents (or return pixels) that are not finite numbers, saying which concept caused it where it can tell.

A LoRA whose change is too large to compute is refused when it is imported (`lora.check_lora_fits`); this is the
second line, for what no check before sampling can see: a change large but computable that still overflows deeper
in the model, guidance too strong for half precision, a decoder overflowing in float16.
"""

from __future__ import annotations

import torch

from .errors import PACGenError

NOT_FINITE = "values that are not finite numbers (NaN or infinity), so no image was made"


class NonFiniteError(PACGenError):
    """A generation whose numbers overflowed: the message says where, and what to change."""


class RowWatch:
    """Which of the base model and each concept first gave a non-finite prediction, noted on the device as the
    steps run (no wait for the device per step); read once, after the last step, only when something went wrong."""

    def __init__(self, names: list[str], device: torch.device):
        self.names = names
        self._first = torch.zeros(len(names) + 1, dtype=torch.bool, device=device)  # base, then each concept
        self._seen = torch.zeros((), dtype=torch.bool, device=device)
        self._owners: dict[tuple, torch.Tensor] = {}

    def _owner_matrix(self, owners: tuple[tuple[str, ...], ...]) -> torch.Tensor:
        """(rows, 1 + concepts): which of base and concepts each row runs with (its LoRAs, or none: the base)."""
        if owners not in self._owners:
            matrix = torch.zeros(len(owners), len(self.names) + 1, dtype=torch.bool)
            for row, names in enumerate(owners):
                for name in names or (None,):
                    matrix[row, 0 if name is None else 1 + self.names.index(name)] = True
            self._owners[owners] = matrix.to(self._first.device)
        return self._owners[owners]

    def record(self, noise: torch.Tensor, owners: tuple[tuple[str, ...], ...]) -> None:
        """Note one step's batched prediction, whose rows (each repeated per image) run with `owners`' concepts."""
        bad_rows = (~torch.isfinite(noise)).flatten(1).any(dim=1).view(len(owners), -1).any(dim=1)
        bad = (bad_rows[:, None] & self._owner_matrix(owners)).any(dim=0)
        self._first = torch.where(self._seen, self._first, bad)
        self._seen = self._seen | bad.any()

    def check(self, latents: torch.Tensor, dtype: torch.dtype) -> None:
        """Refuse latents that are not all finite, naming the concepts whose rows went non-finite first (while the
        base model's did not)."""
        if bool(torch.isfinite(latents).all()):
            return
        base, *concepts = self._first.tolist()
        culprits = [name for name, bad in zip(self.names, concepts) if bad]
        if culprits and not base:
            which = ", ".join(f"'{name}'" for name in culprits)
            raise NonFiniteError(f"generation failed: concept {which} drove the model to {NOT_FINITE}; its weights do "
                                 f"not work on this model in {_name(dtype)}: delete it, or import a sound copy")
        raise NonFiniteError(f"generation failed: the model computed {NOT_FINITE}; try a lower guidance scale or "
                             "another scheduler")


def check_decoded(decoded: torch.Tensor) -> None:
    """Refuse decoded pixels that are not all finite (they would be saved as a black image)."""
    if not bool(torch.isfinite(decoded).all()):
        raise NonFiniteError(f"generation failed: the image decoder ({_name(decoded.dtype)}) computed {NOT_FINITE}")


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
