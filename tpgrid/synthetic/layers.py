"""How each synthetic covariate product is delivered, and the catalog that describes them.

Products come as real ones do, in different CRSs and native resolutions:

=============================  ==========================  ========  ===============
layers                         CRS                         pixel     dtype
=============================  ==========================  ========  ===============
dem                            EPSG:4326                   30″       int16 (m)
mat, map, ai                   EPSG:4326 (ERA5-like)       0.1°      float32
ndvi, npp                      MODIS sinusoidal            926.6 m   float32
clay, silt, sand, soc, ph, cia Asia Lambert (ESRI:102012)  2.5 km    float32
vegetation                     EPSG:4326 (1:1M map)        1/240°    uint8 codes
lithology                      UTM 46N (EPSG:32646)        1 km      uint8 codes
grazing                        EPSG:4326 (yearbooks)       0.25°     float32
=============================  ==========================  ========  ===============

Categorical layers carry class codes (:data:`VEGETATION_CLASSES`, :data:`LITHOLOGY_CLASSES`);
the catalog names lithology classes in words (:data:`LITHOLOGY_NAMES`). Each layer's predictor
group is a free name: vegetation types are ``land_cover``, lithology ``geology``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

VEGETATION_CLASSES = {1: "forest", 2: "shrub", 3: "meadow", 4: "steppe", 5: "desert", 6: "cropland"}
LITHOLOGY_CLASSES = {1: "IA", 2: "MA", 3: "SC", 4: "SO", 5: "UE", 6: "UF"}
# What the map's SOTER-style codes stand for: the catalog names classes by these, so the report
# reads "acid metamorphic (MA)" where the map and the site table say "MA".
LITHOLOGY_NAMES = {
    "IA": "acid igneous (IA)",
    "MA": "acid metamorphic (MA)",
    "SC": "clastic sedimentary (SC)",
    "SO": "carbonate sedimentary (SO)",
    "UE": "aeolian deposits (UE)",
    "UF": "fluvial deposits (UF)",
}
CATEGORY_NODATA = 0
FLOAT_NODATA = -9999.0
DEM_NODATA = -32768

MODIS_SINUSOIDAL = "+proj=sinu +lon_0=0 +x_0=0 +y_0=0 +R=6371007.181 +units=m +no_defs"
MODIS_PIXEL_M = 926.625433
ASIA_LAMBERT = "ESRI:102012"
UTM_46N = "EPSG:32646"

Resample = Literal["average", "bilinear", "mode"]


@dataclass(frozen=True)
class LayerSpec:
    """How one covariate product is delivered: CRS, native pixel size, dtype and metadata."""

    kind: Literal["continuous", "categorical"]
    group: str
    units: str
    crs: str
    resolution: float
    dtype: str
    nodata: float
    resampling: Resample  # onto the 1 km grid: average if finer, bilinear if coarser, mode
    valid_range: tuple[float, float] | None
    description: str


LAYERS: dict[str, LayerSpec] = {
    "dem": LayerSpec(
        "continuous",
        "topography",
        "m",
        "EPSG:4326",
        1 / 120,
        "int16",
        DEM_NODATA,
        "average",
        (0, 9000),
        "elevation, 30″ (SRTM-like)",
    ),
    "mat": LayerSpec(
        "continuous",
        "climate",
        "degC",
        "EPSG:4326",
        0.1,
        "float32",
        FLOAT_NODATA,
        "bilinear",
        (-30, 35),
        "mean annual temperature, 0.1°",
    ),
    "map": LayerSpec(
        "continuous",
        "climate",
        "mm/yr",
        "EPSG:4326",
        0.1,
        "float32",
        FLOAT_NODATA,
        "bilinear",
        (0, 3000),
        "mean annual precipitation, 0.1°",
    ),
    "ai": LayerSpec(
        "continuous",
        "climate",
        "1",
        "EPSG:4326",
        0.1,
        "float32",
        FLOAT_NODATA,
        "bilinear",
        (0, 5),
        "aridity index MAP/PET, 0.1°",
    ),
    "ndvi": LayerSpec(
        "continuous",
        "vegetation",
        "1",
        MODIS_SINUSOIDAL,
        MODIS_PIXEL_M,
        "float32",
        FLOAT_NODATA,
        "average",
        (-0.2, 1),
        "NDVI, MODIS sinusoidal",
    ),
    "npp": LayerSpec(
        "continuous",
        "vegetation",
        "gC/m2/yr",
        MODIS_SINUSOIDAL,
        MODIS_PIXEL_M,
        "float32",
        FLOAT_NODATA,
        "average",
        (0, 2000),
        "NPP, MODIS sinusoidal",
    ),
    "clay": LayerSpec(
        "continuous",
        "soil",
        "%",
        ASIA_LAMBERT,
        2500,
        "float32",
        FLOAT_NODATA,
        "bilinear",
        (0, 100),
        "clay fraction 0-10 cm",
    ),
    "silt": LayerSpec(
        "continuous",
        "soil",
        "%",
        ASIA_LAMBERT,
        2500,
        "float32",
        FLOAT_NODATA,
        "bilinear",
        (0, 100),
        "silt fraction 0-10 cm",
    ),
    "sand": LayerSpec(
        "continuous",
        "soil",
        "%",
        ASIA_LAMBERT,
        2500,
        "float32",
        FLOAT_NODATA,
        "bilinear",
        (0, 100),
        "sand fraction 0-10 cm",
    ),
    "soc": LayerSpec(
        "continuous",
        "soil",
        "g/kg",
        ASIA_LAMBERT,
        2500,
        "float32",
        FLOAT_NODATA,
        "bilinear",
        (0, 300),
        "soil organic carbon 0-10 cm",
    ),
    "ph": LayerSpec(
        "continuous",
        "soil",
        "1",
        ASIA_LAMBERT,
        2500,
        "float32",
        FLOAT_NODATA,
        "bilinear",
        (3, 10),
        "soil pH (H2O)",
    ),
    "cia": LayerSpec(
        "continuous",
        "soil",
        "1",
        ASIA_LAMBERT,
        2500,
        "float32",
        FLOAT_NODATA,
        "bilinear",
        (0, 1),
        "chemical index of alteration, fraction",
    ),
    "vegetation": LayerSpec(
        "categorical",
        "land_cover",
        "",
        "EPSG:4326",
        1 / 240,
        "uint8",
        CATEGORY_NODATA,
        "mode",
        None,
        "vegetation type, 1:1,000,000 map",
    ),
    "lithology": LayerSpec(
        "categorical",
        "geology",
        "",
        UTM_46N,
        1000,
        "uint8",
        CATEGORY_NODATA,
        "mode",
        None,
        "lithology, 1:1,500,000 map",
    ),
    "grazing": LayerSpec(
        "continuous",
        "disturbance",
        "sheep units/km2",
        "EPSG:4326",
        0.25,
        "float32",
        FLOAT_NODATA,
        "bilinear",
        (0, 1000),
        "grazing intensity from county yearbooks",
    ),
}
LAYER_NAMES = tuple(LAYERS)


def catalog_document() -> dict[str, object]:
    """The ``catalog.yaml`` of the covariate files: path, kind, units, classes or range."""
    layers: dict[str, dict[str, object]] = {}
    for name, spec in LAYERS.items():
        entry: dict[str, object] = {
            "path": f"covariates/{name}.tif",
            "kind": spec.kind,
            "group": spec.group,
            "units": spec.units,
            "description": spec.description,
        }
        if name == "vegetation":
            entry["classes"] = dict(VEGETATION_CLASSES)
        elif name == "lithology":
            entry["classes"] = {c: LITHOLOGY_NAMES[a] for c, a in LITHOLOGY_CLASSES.items()}
        else:
            entry["valid_range"] = list(spec.valid_range or ())
        layers[name] = entry
    return {"layers": layers, "terrain": {"dem": "dem"}}
