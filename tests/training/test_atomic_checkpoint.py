"""Checkpoints are written atomically: a full disk while overwriting `last.ckpt` keeps the previous one resumable."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from steprune.atomic_file import atomic_write
from steprune.training.atomic_checkpoint import AtomicCheckpointIO
from tests.inputs import write_instruct_fixture

ROOT = Path(__file__).resolve().parents[2]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "last.ckpt"
    target.write_bytes(b"the good checkpoint")

    def half_then_full(handle) -> None:
        handle.write(b"half a new checkp")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(
        OSError,
        match=r"could not write the checkpoint .*last.ckpt \(No space left on device\); "
        r"the previous last.ckpt is intact\. Free space",
    ) as caught:
        atomic_write(target, half_then_full, what="checkpoint")
    assert caught.value.errno == errno.ENOSPC
    assert target.read_bytes() == b"the good checkpoint"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_checkpoint_io_round_trip_in_place(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "sub" / "last.ckpt"
    io.save_checkpoint({"global_step": 3, "w": torch.arange(4)}, path)
    io.save_checkpoint({"global_step": 4, "w": torch.arange(5)}, path)
    state = io.load_checkpoint(path)
    assert state["global_step"] == 4 and torch.equal(state["w"], torch.arange(5))
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    out = subprocess.run(["sh", "-c", "umask"], capture_output=True, text=True, check=True).stdout
    return int(out.strip(), 8)


def _can_mount_tmpfs(tmp_path: Path) -> bool:
    if shutil.which("unshare") is None:
        return False
    (tmp_path / "probe").mkdir()
    probe = [
        "unshare",
        "--user",
        "--map-root-user",
        "--mount",
        "mount",
        "-t",
        "tmpfs",
        "tmpfs",
        str(tmp_path / "probe"),
    ]
    return subprocess.run(probe, capture_output=True).returncode == 0


@pytest.mark.slow
def test_a_full_disk_while_overwriting_last_ckpt_keeps_the_previous_one_resumable(tmp_path):
    """A real full disk: `steprune train fit` checkpoints onto a 4 MiB tmpfs (a private mount namespace, no root
    needed), which is filled right before the step-2 save; $TMPDIR stays on the real disk, as on a cluster."""
    if not _can_mount_tmpfs(tmp_path):
        pytest.skip("needs unprivileged user + mount namespaces (unshare) to mount a small tmpfs")
    records = write_instruct_fixture(tmp_path, 4, seed=3)
    (tmp_path / "data.json").write_text(json.dumps(records))
    (tmp_path / "checkpoints").mkdir()
    command = ["unshare", "--user", "--map-root-user", "--mount", sys.executable, "-m", "tests.training.full_disk"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path)}
    done = subprocess.run([*command, str(tmp_path), "4m"], cwd=tmp_path, env=env, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, f"rc {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    result = json.loads(lines[-1][len("RESULT ") :])
    assert result["first_step"] == 1
    assert result["errno"] == errno.ENOSPC, result
    assert result["kept_step"] == 1, f"the previous last.ckpt is lost: {result['kept_step']}"
    assert "the previous last.ckpt is intact" in result["error"] and "Free space" in result["error"]
    assert result["left"] == ["last.ckpt"], "no temporary file is left behind"
    assert result["resumed_step"] == 2
