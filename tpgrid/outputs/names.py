"""The names of a publication's files: one COG per element and layer, one quicklook PNG per
element and the STAC item.

Writing the maps, drawing the quicklooks, listing the assets and linking unchanged files from
an earlier publication must all agree on these names, so they live here, once.
"""

from __future__ import annotations

from collections.abc import Sequence

from tpgrid.outputs.layers import variable_name

STAC_ITEM = "item.json"


def cog_name(element: str, layer: str) -> str:
    """The COG of one layer of one element, e.g. ``Fe_mean.tif``."""
    return f"{variable_name(element, layer)}.tif"


def quicklook_name(element: str) -> str:
    """The quicklook PNG of one element, e.g. ``Fe_quicklook.png``."""
    return f"{element}_quicklook.png"


def element_files(element: str, layers: Sequence[str]) -> list[str]:
    """An element's published files: the COGs of its ``layers`` and its quicklook."""
    return [*(cog_name(element, layer) for layer in layers), quicklook_name(element)]
