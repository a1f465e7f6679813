"""The STAC item of a publication: the run and its assets, each with its size and checksum.

Catalogues find a published run by its item, and anyone can verify the files against it; an
earlier publication's item is also what unchanged files are checked against before they are
linked into a new one. Here the item is made (:func:`stac_item`), written for the maps of a
run (:class:`MapFiles`, :func:`write_item`) and read back (:func:`read_item`,
:func:`asset_records`, :func:`published_run`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pyproj import CRS

from tpgrid.core.blocks import AOA_NODATA, UNSEEN_NODATA
from tpgrid.grid import TargetGrid
from tpgrid.integrity import Damage, FileRecord, file_record
from tpgrid.jsonable import plain
from tpgrid.outputs.layers import (
    layer_title,
    layer_units,
    quality_warning,
    run_layers,
    variable_name,
)
from tpgrid.outputs.names import STAC_ITEM, cog_name, quicklook_name

#: STAC item property: per published file, the digest of what it was made from
#: (:func:`~tpgrid.outputs.maps.file_digests`).
ITEM_DIGESTS = "tpgrid:file_digests"
COG_MEDIA_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"
STAC_EXTENSIONS = [
    "https://stac-extensions.github.io/projection/v2.0.0/schema.json",
    "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
    # file:size and file:checksum of every asset: anyone can verify a published version.
    "https://stac-extensions.github.io/file/v2.1.0/schema.json",
]
#: Asset fields of every file of an element: its model's grouped-CV R², and a warning when
#: that is below 0 (the map predicts held-out sites worse than their mean).
ASSET_CV_R2 = "tpgrid:cv_r2"
ASSET_QUALITY_WARNING = "tpgrid:quality_warning"
#: Asset property of the interval bounds: the calibration they were built by (level, method,
#: DI bins and their widening).
ASSET_INTERVAL = "tpgrid:interval"
#: Multihash prefix of a SHA-256 digest (code 0x12, length 0x20), as in ``file:checksum``.
SHA256_MULTIHASH = "1220"


@dataclass(frozen=True, eq=False)
class MapFiles:
    """The maps of a run written into ``directory`` by
    :func:`~tpgrid.outputs.maps.write_maps`, and what its STAC item (:func:`write_item`) needs:
    the run, its elements, the digest of each file, the COG shape, and the records of files linked
    from a previous publication (checked, not hashed again) and of files rendered (hashed by
    the task that wrote them)."""

    directory: Path
    attrs: Mapping[str, Any]
    run: Mapping[str, Any]
    grid: TargetGrid
    elements: tuple[str, ...]
    digests: Mapping[str, str]  # by file name
    cog_shape: tuple[int, int]
    linked: Mapping[str, FileRecord]
    rendered: Mapping[str, FileRecord]
    reused: tuple[str, ...]  # elements all of whose files were linked
    damaged: tuple[Damage, ...]  # files of the previous publication that failed their check


def write_item(
    maps: MapFiles,
    assets: Mapping[str, Mapping[str, Any]] | None = None,
    links: Sequence[Mapping[str, Any]] = (),
) -> Path:
    """Write the STAC item of ``maps`` into their directory, with ``assets`` and ``links``
    beside the maps' own; every asset gets the file extension's size and checksum."""
    item = stac_item(maps.attrs, maps.run, maps.grid, maps.elements, maps.cog_shape)
    item["properties"][ITEM_DIGESTS] = dict(maps.digests)
    item["assets"].update({key: dict(value) for key, value in (assets or {}).items()})
    item["links"].extend(dict(link) for link in links)
    for asset in item["assets"].values():
        name = _relative(asset["href"])
        record = (
            maps.linked.get(name) or maps.rendered.get(name) or file_record(maps.directory / name)
        )
        asset["file:size"] = record.size
        asset["file:checksum"] = record.multihash
    path = maps.directory / STAC_ITEM
    path.write_text(json.dumps(item, indent=2) + "\n")
    return path


def asset_records(item: Mapping[str, Any]) -> dict[str, FileRecord | None]:
    """Each asset's file (path relative to the item) and the size and SHA-256 the item records
    for it; None where it records none (or not as a SHA-256 multihash)."""
    records: dict[str, FileRecord | None] = {}
    for asset in dict(item["assets"]).values():
        size, checksum = asset.get("file:size"), asset.get("file:checksum")
        valid = (
            isinstance(size, int)
            and isinstance(checksum, str)
            and checksum.startswith(SHA256_MULTIHASH)
            and len(checksum) == len(SHA256_MULTIHASH) + 64
        )
        records[_relative(str(asset["href"]))] = (
            FileRecord(int(size), checksum[len(SHA256_MULTIHASH) :]) if valid else None
        )
    return records


def read_item(directory: Path) -> dict[str, Any]:
    """The STAC item in ``directory``; OSError or ValueError when it is missing or not one."""
    item = json.loads((directory / STAC_ITEM).read_text())
    if not isinstance(item, dict) or not isinstance(item.get("assets"), dict):
        raise ValueError("not a STAC item with assets")
    return item


def _relative(href: str) -> str:
    """An asset's href as a path relative to its item (hrefs here are ``./name``)."""
    return href.removeprefix("./")


def published_run(directory: Path) -> str | None:
    """The run id of the files published in ``directory``, or None."""
    try:
        item = json.loads((directory / STAC_ITEM).read_text())
        return str(item["properties"]["tpgrid:run_id"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def stac_item(
    attrs: Mapping[str, Any],
    run: Mapping[str, Any],
    grid: TargetGrid,
    elements: Sequence[str],
    cog_shape: tuple[int, int],
) -> dict[str, Any]:
    """A STAC 1.0 Item (projection and raster extensions) for the published files of a run,
    dated now (its publication).

    ``cog_shape`` is the (rows, cols) of the COGs (the grid's); the transform is the grid's.
    Asset hrefs are relative to the item, so the directory can be moved as a whole. Every
    asset of an element carries its model's grouped-CV R² (``tpgrid:cv_r2``, as the run
    records it) and, for a model worse than the held-out sites' mean, a
    ``tpgrid:quality_warning`` that its title repeats: where a catalogue shows an asset.
    """
    footprint = grid.geobox.footprint("EPSG:4326", npoints=20)
    box = footprint.boundingbox
    published = datetime.now(UTC).isoformat(timespec="seconds")
    assets: dict[str, Any] = {}
    for element in elements:
        r2 = run["models"][element].get("cv_r2")
        warning = quality_warning(r2)
        quality = ({} if r2 is None else {ASSET_CV_R2: r2}) | (
            {} if warning is None else {ASSET_QUALITY_WARNING: warning}
        )
        flagged = "" if warning is None else f" (poor model: grouped-CV R² {r2:.2f})"
        interval = run["models"][element].get("interval")
        level = None if interval is None else float(interval["level"])
        for layer in run_layers(run):
            flags = {"unseen": UNSEEN_NODATA, "aoa": AOA_NODATA}
            band: dict[str, Any] = (
                {"data_type": "uint8", "nodata": flags[layer]}
                if layer in flags
                else {"data_type": "float32", "nodata": "nan", "unit": layer_units(layer)}
            )
            assets[variable_name(element, layer)] = {
                "href": f"./{cog_name(element, layer)}",
                "type": COG_MEDIA_TYPE,
                "roles": ["data"],
                "title": f"{element} {layer_title(layer, level)}{flagged}",
                "raster:bands": [band],
                **quality,
                **(
                    {ASSET_INTERVAL: interval}
                    if layer in ("lower", "upper") and interval is not None
                    else {}
                ),
            }
        assets[f"{element}_quicklook"] = {
            "href": f"./{quicklook_name(element)}",
            "type": "image/png",
            "roles": ["overview"],
            "title": f"{element} mean and between-tree SD{flagged}",
            **quality,
        }
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": STAC_EXTENSIONS,
        "id": f"tpgrid-{run['run_id'][:16]}",
        "geometry": plain(footprint.json),
        "bbox": [box.left, box.bottom, box.right, box.top],
        "properties": {
            "datetime": published,
            "created": published,
            "title": attrs["title"],
            "description": attrs["summary"],
            "proj:code": _authority_code(grid),
            "proj:wkt2": grid.crs.to_wkt(),
            "proj:shape": list(cog_shape),
            "proj:transform": list(grid.geobox.affine)[:6],
            "proj:bbox": list(grid.geobox.expand(cog_shape).extent.boundingbox.bbox),
            "tpgrid:run_id": run["run_id"],
            "tpgrid:unseen": run["options"]["unseen"],
            "tpgrid:options": run["options"],
            "tpgrid:models": {e: run["models"][e]["model_hash"] for e in elements},
        },
        "assets": assets,
        "links": [],
    }


def _authority_code(grid: TargetGrid) -> str | None:
    """``"AUTHORITY:CODE"`` of the grid's CRS, or None for a CRS without one (then only
    ``proj:wkt2`` describes it)."""
    authority = CRS.from_wkt(grid.crs_wkt).to_authority()
    return f"{authority[0]}:{authority[1]}" if authority else None
