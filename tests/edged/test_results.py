"""The JSON-lines results file when the disk fills up."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from edged.results import JsonlSink
from tests.support.paths import REPO

# A process whose files may grow to 1000 bytes (RLIMIT_FSIZE: the kernel writes what fits
# and refuses the rest with EFBIG, as a disk that fills up does), then room again.
WRITER = textwrap.dedent(
    """
    import resource, signal, sys
    from pathlib import Path
    from edged.results import JsonlSink

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    sink = JsonlSink(Path(sys.argv[1]))
    hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
    resource.setrlimit(resource.RLIMIT_FSIZE, (1000, hard))
    failed = 0
    for i in range(40):
        try:
            sink.write({"frame": i, "pad": "x" * 60})
        except OSError:
            failed += 1
    resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
    sink.write({"frame": "after"})
    sink.close()
    print(failed)
    """
)


def test_a_line_cut_by_a_full_disk_leaves_the_next_lines_whole(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    out = subprocess.run(
        [sys.executable, "-c", WRITER, str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    assert int(out.stdout) > 20  # most writes were refused, without growing memory
    lines = path.read_bytes().split(b"\n")
    assert len(path.read_bytes()) > 990  # the last write that fitted filled the file
    whole = [json.loads(line) for line in lines[:-3]]
    assert [r["frame"] for r in whole] == list(range(len(whole)))
    cut = lines[-3]  # the line the full disk cut short, then the next record on its own
    assert not cut.endswith(b"}") and json.loads(lines[-2]) == {"frame": "after"}
    assert lines[-1] == b""


def test_the_results_file_rotates_and_keeps_a_bounded_history(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    path.write_text('{"frame":"from an earlier run"}\n')  # counted towards the first file
    sink = JsonlSink(path, max_bytes=1000, keep=2)
    for i in range(100):
        sink.write({"frame": i, "pad": "x" * 60})  # 81-82 bytes a line: 12 to a file
    sink.close()
    files = sorted(tmp_path.iterdir())
    assert [f.name for f in files] == ["results.jsonl", "results.jsonl.1", "results.jsonl.2"]
    assert all(0 < f.stat().st_size <= 1000 for f in files)
    frames = [
        json.loads(line)["frame"]
        for name in ("results.jsonl.2", "results.jsonl.1", "results.jsonl")
        for line in (tmp_path / name).read_text().splitlines()
    ]
    assert frames == list(range(frames[0], 100))  # the newest kept, in order
    # 11 lines in the first file (it held the earlier run's line), then 12 a file
    assert sink.rotations == 8 and len(frames) == 12 + 12 + 5
