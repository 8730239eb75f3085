"""The README stays true to the code: its Python blocks run as written, and every table of figures
names the command that produced it (the figures are pasted from that command's output)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"
_COMMAND = re.compile(r"`((?:python|python3|kanlab|torchrun) [^`]+)`")


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


def _tables() -> list[tuple[int, list[str]]]:
    """(first line number, lines) of each Markdown table outside code blocks."""
    tables, current, fenced = [], None, False
    for n, line in enumerate(README.read_text(encoding="utf-8").splitlines()):
        if line.startswith("```"):
            fenced = not fenced
        is_row = not fenced and line.startswith("|")
        if is_row and current is None:
            current = (n, [])
            tables.append(current)
        if is_row:
            current[1].append(line)
        else:
            current = None
    return tables


def test_readme_has_the_two_set_up_commands_first():
    """The first screen: one command for the main job, one for the tests (what CI runs)."""
    first = README.read_text(encoding="utf-8").split("```")[1]
    lines = [ln for ln in first.splitlines() if ln and not ln.startswith(("bash", "#"))]
    assert len(lines) == 2, lines
    assert lines[0].endswith("kanlab compare") and lines[1].endswith("python -m pytest -q")
    ci = (README.parent / ".ci" / "run").read_text(encoding="utf-8")
    assert "python -m pytest -q" in ci


def test_every_readme_table_names_its_command():
    """Each table of figures is preceded (in the lines since the previous table or heading) by
    the command that produced it, in backticks."""
    text = README.read_text(encoding="utf-8").splitlines()
    tables = _tables()
    assert len(tables) >= 3
    for start, rows in tables:
        above: list[str] = []
        for line in reversed(text[:start]):
            if line.startswith(("|", "#")):
                break
            above.append(line)
        assert _COMMAND.search(" ".join(above)), f"README table at line {start + 1}: {rows[0]}"


@pytest.mark.slow
def test_readme_python_blocks_run(tmp_path, monkeypatch):
    """Every Python block of the README, in order, in one namespace (a later block uses an
    earlier block's names), in a scratch directory; then the figures the blocks claim."""
    matplotlib = pytest.importorskip("matplotlib")
    pytest.importorskip("sympy")
    pytest.importorskip("safetensors")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    monkeypatch.chdir(tmp_path)
    blocks = _python_blocks()
    assert len(blocks) >= 2
    ns: dict = {"__name__": "__readme__"}
    threads = torch.get_num_threads()
    try:
        for i, code in enumerate(blocks):
            exec(compile(code, f"README.md, Python block {i + 1}", "exec"), ns)
    finally:
        torch.set_num_threads(threads)
        plt.close("all")
    # Block 1: "print(model.grid_size, hist.final_test_metric)  # 50, test RMSE ~5e-7"; then
    # extended to 100 and saved/loaded.
    assert ns["hist"].final_test_metric < 2e-6
    assert ns["model"].grid_size == 100
    assert (tmp_path / "kan.safetensors").exists()
    # Block 2: the pruned KAN's formula is a sympy expression of both inputs.
    (expr,) = ns["kl"].symbolic_formula(ns["pruned"], precision=4)
    assert {str(s) for s in expr.free_symbols} == {"x_1", "x_2"}
    # Block 3 (multiplication nodes): "print(kl.symbolic_formula(mkan)[0])  # x_1*x_2".
    sympy = pytest.importorskip("sympy")
    (prod,) = ns["kl"].symbolic_formula(ns["mkan"])
    x1, x2 = sympy.symbols("x_1 x_2", real=True)
    assert sympy.srepr(prod) == sympy.srepr(x1 * x2)
