"""The converted-model cache: two processes converting the packaged Gemma GGUF into one cache at once.

The second one must wait for the first (saying whom it waits for) and then use the folder the first
made, never convert again nor collide with it. The first process here is a stand-in that holds the
cache's lock and then finishes a folder, so the test is deterministic and takes seconds, not a
real conversion's minutes; the waiting side is the real ``resolve_model``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from mediflow.train.models import PACKAGED_GGUF_MODELS

HOLDER = """
import sys
from pathlib import Path
from mediflow.folders.guards import FolderLock
cache, target = Path(sys.argv[1]), Path(sys.argv[2])
lock = FolderLock(cache)
lock.acquire()
print("held", flush=True)
sys.stdin.readline()
target.mkdir()
(target / "config.json").write_text("{}")
lock.release()
"""

WAITER = """
import sys
from pathlib import Path
from mediflow.train.models import resolve_model
print(resolve_model(sys.argv[2], cache_dir=Path(sys.argv[1])), flush=True)
"""


def test_a_second_conversion_waits_for_the_first_and_uses_its_folder(tmp_path: Path) -> None:
    name, (_, folder, _) = next(iter(PACKAGED_GGUF_MODELS.items()))
    cache = tmp_path / "models"
    cache.mkdir()
    target = cache / folder
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(cache), str(target)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    waiter = None
    try:
        assert holder.stdout is not None and holder.stdin is not None
        assert holder.stdout.readline().strip() == "held"
        waiter = subprocess.Popen([sys.executable, "-c", WAITER, str(cache), name], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert waiter.stderr is not None
        said = ""
        while "waiting for another process" not in said:  # blocks on the pipe until the waiter says it waits
            line = waiter.stderr.readline()
            assert line, f"the second process never waited: {said}"
            said += line
        assert "(pid " in said
        holder.stdin.write("done\n")
        holder.stdin.flush()
        assert holder.wait(timeout=60) == 0
        out, err = waiter.communicate(timeout=120)
        assert waiter.returncode == 0, err
        assert out.strip() == str(target)
        assert sorted(p.name for p in cache.iterdir()) == [".lock", folder]  # nothing assembled, staged or converted again
    finally:
        for process in (holder, waiter):
            if process is not None and process.poll() is None:
                process.kill()
