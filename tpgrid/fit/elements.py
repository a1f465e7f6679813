"""Which columns of a site table are elements: those named by a chemical element's symbol.

A site table's element columns are found by name, so a survey of Pb, Cd and As is fitted
without being told its elements, and a column such as ``ph`` or ``depth_cm`` is never taken
for one. ``<E>_icpms`` columns are the calibration subset of element ``E``, not elements.

The fit settings leave both choices to the table by default: :func:`resolve_elements` turns
``fit.elements`` (None: every element column) and :func:`resolve_calibration` turns
``fit.calibrate`` ("auto": every element with ICP-MS values) into the lists a fit uses.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from typing import Literal

from tpgrid.errors import SiteTableError

#: How the user names the fit's elements, in every message about them.
ELEMENTS_KEYS = "fit.elements in the pipeline YAML, or --element"
#: How the user names the calibrated elements, in every message about them.
CALIBRATE_KEYS = "fit.calibrate in the pipeline YAML, or --calibrate"
#: The fix of every calibration problem: calibrate fewer elements, or none.
CALIBRATE_FIX = (
    f"list only the elements to calibrate in {CALIBRATE_KEYS} ([] turns calibration off; "
    "unset, every element with ICP-MS values is calibrated)"
)

#: Every element symbol of the periodic table, H to Og.
ELEMENT_SYMBOLS = frozenset(
    [
        "H",
        "He",
        "Li",
        "Be",
        "B",
        "C",
        "N",
        "O",
        "F",
        "Ne",
        "Na",
        "Mg",
        "Al",
        "Si",
        "P",
        "S",
        "Cl",
        "Ar",
        "K",
        "Ca",
        "Sc",
        "Ti",
        "V",
        "Cr",
        "Mn",
        "Fe",
        "Co",
        "Ni",
        "Cu",
        "Zn",
        "Ga",
        "Ge",
        "As",
        "Se",
        "Br",
        "Kr",
        "Rb",
        "Sr",
        "Y",
        "Zr",
        "Nb",
        "Mo",
        "Tc",
        "Ru",
        "Rh",
        "Pd",
        "Ag",
        "Cd",
        "In",
        "Sn",
        "Sb",
        "Te",
        "I",
        "Xe",
        "Cs",
        "Ba",
        "La",
        "Ce",
        "Pr",
        "Nd",
        "Pm",
        "Sm",
        "Eu",
        "Gd",
        "Tb",
        "Dy",
        "Ho",
        "Er",
        "Tm",
        "Yb",
        "Lu",
        "Hf",
        "Ta",
        "W",
        "Re",
        "Os",
        "Ir",
        "Pt",
        "Au",
        "Hg",
        "Tl",
        "Pb",
        "Bi",
        "Po",
        "At",
        "Rn",
        "Fr",
        "Ra",
        "Ac",
        "Th",
        "Pa",
        "U",
        "Np",
        "Pu",
        "Am",
        "Cm",
        "Bk",
        "Cf",
        "Es",
        "Fm",
        "Md",
        "No",
        "Lr",
        "Rf",
        "Db",
        "Sg",
        "Bh",
        "Hs",
        "Mt",
        "Ds",
        "Rg",
        "Cn",
        "Nh",
        "Fl",
        "Mc",
        "Lv",
        "Ts",
        "Og",
    ]
)


def element_columns(columns: Iterable[object]) -> tuple[str, ...]:
    """The columns named exactly by an element symbol (case as written: ``Co``, not ``CO``),
    in table order."""
    return tuple(c for c in columns if isinstance(c, str) and c in ELEMENT_SYMBOLS)


def resolve_elements(
    requested: Sequence[str] | None, available: Sequence[str], table: object
) -> tuple[str, ...]:
    """The elements to fit: ``requested`` as given, or with None every element column of the
    table (``available``, in table order). ``table`` names the site table in messages.

    A requested element without its column, or a table without element columns, is a
    :class:`SiteTableError` naming ``fit.elements`` and ``--element``.
    """
    if requested is None:
        if not available:
            raise SiteTableError(
                f"{table} has no element column: element columns are named by the element's "
                "symbol (Pb, Cd, As, ... in mg/kg); rename them, or list the columns to fit in "
                + ELEMENTS_KEYS
            )
        return tuple(available)
    absent = [e for e in requested if e not in available]
    if absent:
        raise SiteTableError(
            f"{table} has no column for element(s) {absent} (its element columns: "
            f"{list(available)}): add the column (mg/kg, blank where not measured), or fit "
            f"only the elements the table has: set {ELEMENTS_KEYS}, or leave fit.elements "
            "unset to fit every element column"
        )
    return tuple(requested)


def resolve_calibration(
    requested: Literal["auto"] | Sequence[str],
    elements: Sequence[str],
    with_icpms: Collection[str],
    table: object,
) -> tuple[str, ...]:
    """The fitted elements calibrated from XRF to ICP-MS, in ``elements`` order.

    ``with_icpms`` are the elements whose ``<E>_icpms`` column holds values. "auto" calibrates
    each of them; an explicit list is used as given (elements not fitted are ignored), and
    one of its elements without ICP-MS values is a :class:`SiteTableError` naming
    ``fit.calibrate`` and ``--calibrate``.
    """
    if requested == "auto":
        return tuple(e for e in elements if e in with_icpms)
    missing = [e for e in requested if e in elements and e not in with_icpms]
    if missing:
        columns = [f"{e}_icpms" for e in missing]
        raise SiteTableError(
            f"{table}: calibrating {missing} from XRF to ICP-MS needs the re-measured values "
            f"in column(s) {columns}, which the table does not have or leaves blank: add them, "
            f"or {CALIBRATE_FIX}"
        )
    return tuple(e for e in elements if e in requested)
