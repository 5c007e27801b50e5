"""Reading the benches' Markdown tables back in the tests."""


def table_rows(out: str, first_cell: str) -> list[list[str]]:
    """Cells of the Markdown table rows of ``out`` whose first cell is ``first_cell``."""
    rows = []
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == first_cell:
            rows.append(cells)
    return rows


def number(cell: str) -> float:
    return float(cell.replace(",", "").rstrip("%"))
