"""Which columns of a site table are elements: those named by a chemical element's symbol.

A site table's element columns are found by name, so a survey of Pb, Cd and As is fitted
without being told its elements, and a column such as ``ph`` or ``depth_cm`` is never taken
for one. ``<E>_icpms`` columns are the calibration subset of element ``E``, not elements.
"""

from __future__ import annotations

from collections.abc import Iterable

#: Every element symbol of the periodic table, H to Og.
ELEMENT_SYMBOLS = frozenset(
    """H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge
    As Se Br Kr Rb Sr Y Zr Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba La Ce Pr Nd Pm Sm
    Eu Gd Tb Dy Ho Er Tm Yb Lu Hf Ta W Re Os Ir Pt Au Hg Tl Pb Bi Po At Rn Fr Ra Ac Th Pa U
    Np Pu Am Cm Bk Cf Es Fm Md No Lr Rf Db Sg Bh Hs Mt Ds Rg Cn Nh Fl Mc Lv Ts Og""".split()
)


def element_columns(columns: Iterable[object]) -> tuple[str, ...]:
    """The columns named exactly by an element symbol (case as written: ``Co``, not ``CO``),
    in table order."""
    return tuple(c for c in columns if isinstance(c, str) and c in ELEMENT_SYMBOLS)
