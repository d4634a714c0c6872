"""Atomic outputs: a failed or killed writer never leaves a file that looks complete."""

from __future__ import annotations

import pytest

from regbench.io import atomic_path, write_text


def test_a_failing_writer_leaves_neither_the_file_nor_its_temporary(tmp_path):
    out = tmp_path / "runs" / "method.csv"
    with pytest.raises(RuntimeError), atomic_path(out) as tmp:
        tmp.write_text("xray_id,mtre_mm\na,0.1\n")  # half written, then the job dies
        raise RuntimeError("killed")
    assert list(out.parent.iterdir()) == []


def test_temporaries_of_a_killed_writer_are_removed_by_the_next_write(tmp_path):
    out = tmp_path / "method.csv"
    stale = tmp_path / ".method.csv.abc123.tmp.csv"  # what SIGKILL leaves behind
    other = tmp_path / ".other.csv.abc123.tmp.csv"  # another output's temporary: not ours
    stale.write_text("partial")
    other.write_text("partial")
    write_text("complete\n", out)
    assert out.read_text() == "complete\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [other.name, out.name]
