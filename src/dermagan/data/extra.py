"""An arm's ``extra`` setting: where its extra training images come from (no arrays: the typed params
config checks it at load time)."""

from __future__ import annotations

from dataclasses import dataclass

from dermagan.errors import DermaganError
from dermagan.gan.methods import METHODS

OVERSAMPLE = "oversample"
SYNTHETIC_SETS = ("generated", "dedup")


@dataclass(frozen=True)
class ExtraSource:
    """Parsed ``extra`` setting: kind is "none", "oversample" or "synthetic"."""

    kind: str
    method: str | None = None
    set_name: str | None = None

    @property
    def label(self) -> str:
        return {"none": "none", "oversample": OVERSAMPLE}.get(self.kind, f"{self.method}/{self.set_name}")


def parse_extra(value, where: str = "arm extra") -> ExtraSource:
    """``None`` | ``"oversample"`` | ``"<method>/<generated|dedup>"`` -> ExtraSource (clear error otherwise,
    naming ``where``, e.g. ``arms.effnet.extra``). ``<method>`` is one of :data:`dermagan.gan.methods.METHODS`."""
    if value is None or value in ("none", "null", ""):
        return ExtraSource("none")
    if value == OVERSAMPLE:
        return ExtraSource(OVERSAMPLE)
    method, _, set_name = str(value).partition("/")
    if not method or set_name not in SYNTHETIC_SETS:
        raise DermaganError(f"params: {where} must be null, '{OVERSAMPLE}' or '<method>/<set>' with set in "
                            f"{SYNTHETIC_SETS}, got '{value}'")
    if method not in METHODS:
        raise DermaganError(f"params: {where} = {value!r}: '{method}' is not a GAN method; methods are "
                            f"{sorted(METHODS)}")
    return ExtraSource("synthetic", method, set_name)
