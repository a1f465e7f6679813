from tpgrid.fit.elements import ELEMENT_SYMBOLS, element_columns


def test_the_periodic_table_has_118_symbols() -> None:
    assert len(ELEMENT_SYMBOLS) == 118
    assert {"Fe", "Mn", "Cu", "Zn", "Ni", "V", "Mo", "Pb", "Cd", "As", "Og"} <= ELEMENT_SYMBOLS


def test_element_columns_are_found_by_symbol_in_table_order() -> None:
    columns = ["site_id", "sample_id", "x", "y", "Pb", "ph", "Cd", "Cd_icpms", "CO", "As", 3]
    assert element_columns(columns) == ("Pb", "Cd", "As")
