"""The product of a prediction run: its layers and attributes, and how it is published.

A run is one Zarr v3 group on the cube's grid (written by :mod:`tpgrid.predict`) holding, per
element, the variables ``{element}_{layer}`` (mean, variance, sd, unseen, and the uncertainty
layers the run's options ask for: quantiles, interval bounds, DI and AOA, …) with CF attributes,
a ``spatial_ref`` grid mapping (a coordinate: ``xr.open_zarr(path).rio.crs`` is the grid's CRS),
ACDD discovery attributes and the run's record in a child group. Publishing turns the group
into a directory that GIS users and catalogues can read without Zarr (GDAL cannot read Zarr v3):
one Cloud-Optimized GeoTIFF per element and layer, one quicklook PNG per element (mean and sd
with colour bars) and a STAC item describing the run and its assets, each with its size and
checksum. The directory is assembled beside its final path and swapped in when complete. The
COGs have the grid's shape and transform; GDAL's COG driver writes them, one Dask task per COG,
and a file whose layer did not change since the previous publication is linked from it.

The modules, each using only those after it: :mod:`~tpgrid.outputs.maps` publishes the maps
of a run; :mod:`~tpgrid.outputs.stac` makes, writes and reads its STAC item;
:mod:`~tpgrid.outputs.quicklook` draws the quicklooks; :mod:`~tpgrid.outputs.cog` writes the
COGs; :mod:`~tpgrid.outputs.names` names the published files; :mod:`~tpgrid.outputs.layers`
lays out the prediction group. The names callers use are re-exported here.
"""

from tpgrid.outputs.cog import write_cog
from tpgrid.outputs.layers import (
    ATTR_RUN,
    RUN_GROUP,
    global_attrs,
    layer_layouts,
    layer_units,
    open_prediction,
    quality_warning,
    read_run_record,
    run_layers,
    run_options,
    variable_name,
    write_run_record,
)
from tpgrid.outputs.maps import (
    PublishReport,
    file_digests,
    publish,
    write_maps,
)
from tpgrid.outputs.names import STAC_ITEM
from tpgrid.outputs.quicklook import quicklook_figure, write_quicklook
from tpgrid.outputs.stac import (
    COG_MEDIA_TYPE,
    MapFiles,
    asset_records,
    published_run,
    read_item,
    stac_item,
    write_item,
)

__all__ = [
    "ATTR_RUN",
    "COG_MEDIA_TYPE",
    "RUN_GROUP",
    "STAC_ITEM",
    "MapFiles",
    "PublishReport",
    "asset_records",
    "file_digests",
    "global_attrs",
    "layer_layouts",
    "layer_units",
    "open_prediction",
    "publish",
    "published_run",
    "quality_warning",
    "quicklook_figure",
    "read_item",
    "read_run_record",
    "run_layers",
    "run_options",
    "stac_item",
    "variable_name",
    "write_cog",
    "write_item",
    "write_maps",
    "write_quicklook",
    "write_run_record",
]
