"""`weijian score-csv` end to end: a CSV in, scores and flags out, clear errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "weijian.cli", "score-csv", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_scores_a_file_and_flags_the_spike(tmp_path: Path) -> None:
    rows = ["timestamp,value"] + [
        f"2026-11-23T00:{i // 60:02d}:{i % 60:02d}Z,{20 + (i % 5) * 0.1:.1f}" for i in range(300)
    ]
    rows.append("2026-11-23T00:05:00Z,95.0")
    src = tmp_path / "in.csv"
    src.write_text("\n".join(rows) + "\n")
    out = tmp_path / "out.csv"
    done = run(str(src), "-o", str(out))
    assert done.returncode == 0, done.stderr
    lines = out.read_text().splitlines()
    assert lines[0] == "timestamp,value,score,flag"
    assert len(lines) == 302
    assert lines[-1].endswith(",1")
    assert all(0.0 <= float(line.split(",")[2]) <= 1.0 for line in lines[1:])
    assert sum(int(line.split(",")[3]) for line in lines[1:]) <= 3


def test_reads_stdin_and_reports_a_bad_row_on_one_line() -> None:
    done = run("-", stdin="2026-11-23T00:00:00Z,1\n2026-11-23T00:00:10Z,abc\n")
    assert done.returncode == 1
    assert done.stderr.startswith("error:")
    assert "line 2" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_missing_file_is_one_line(tmp_path: Path) -> None:
    done = run(str(tmp_path / "nope.csv"))
    assert done.returncode == 1
    assert done.stderr.startswith("error:")
