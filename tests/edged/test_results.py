"""The JSON-lines results file when the disk fills up."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

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
