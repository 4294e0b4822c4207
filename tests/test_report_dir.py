"""Report files are replaced whole: a failed write leaves the earlier file as it was, and no temporary file."""

from __future__ import annotations

import os
import subprocess

import pytest

from pytest_quantbench.results import write_atomic


@pytest.fixture
def tmpfs(tmp_path):
    """Mounts a tmpfs of the given size (root only): a disk that really fills up or really is read-only."""
    mounted = []

    def mount(size: str = "256k"):
        path = tmp_path / f"disk{len(mounted)}"
        path.mkdir()
        command = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]
        if os.geteuid() != 0 or subprocess.run(command, capture_output=True, check=False).returncode:
            pytest.skip("mounting a tmpfs needs root and a system that allows it")
        mounted.append(path)
        return path

    yield mount
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], check=True)


def fill(directory) -> None:
    with open(directory / "filler", "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(bytes(4096))
        except OSError:
            pass


def test_failed_writes_leave_the_old_report_whole(tmpfs):
    disk = tmpfs("256k")
    page, plot = disk / "quantbench.html", disk / "plots" / "heatmap.png"
    write_atomic(page, "<html>the earlier report</html>")
    plot.parent.mkdir()
    plot.write_bytes(b"earlier png")
    fill(disk)
    with pytest.raises(OSError, match="No space left"):
        write_atomic(page, "<html>" + "x" * 100_000 + "</html>")
    assert page.read_text() == "<html>the earlier report</html>"
    matplotlib = pytest.importorskip("matplotlib", reason="plots need the matplotlib extra")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pytest_quantbench.report.plots import _save

    fig, ax = plt.subplots()
    ax.plot(range(1000))
    with pytest.raises(OSError):
        _save(fig, plot)
    assert plot.read_bytes() == b"earlier png"
    assert sorted(p.name for p in disk.rglob("*")) == ["filler", "heatmap.png", "plots", "quantbench.html"]


def test_report_files_are_readable_by_others(tmp_path):
    write_atomic(tmp_path / "quantbench.json", "{}")
    mask = os.umask(0o022)
    os.umask(mask)
    assert (tmp_path / "quantbench.json").stat().st_mode & 0o777 == 0o666 & ~mask
