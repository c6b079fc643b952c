# SPDX-License-Identifier: Apache-2.0
"""The benchmarks' pure helpers: file selection, staging, argv, the table."""

import os
import sys

import pytest

from benchmarks import bench_engine
from benchmarks import common
from benchmarks import volume


def _tree(root, spec):
    for rel, size in spec.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, 'wb') as f:
            f.write(b'x' * size)
    return str(root)


def test_select_files_is_sorted_balanced_and_stops_at_target(tmp_path):
    a = _tree(tmp_path / 'a', {'z': 10, 'b/y': 10, 'b/x': 10})
    b = _tree(tmp_path / 'b', {'q': 25, 'p': 5})
    chosen = volume.select_files(45, roots=(a, b))
    # Balanced by bytes: a, b, then whichever root gave the fewest bytes.
    assert [os.path.relpath(p, tmp_path) for p, _ in chosen] == [
        'a/b/x', 'b/p', 'b/q', 'a/b/y']
    assert sum(size for _, size in chosen) == 50
    assert volume.select_files(45, roots=(a, b)) == chosen


def test_select_files_skips_links_empty_big_and_pycache(tmp_path):
    root = _tree(tmp_path / 'r', {'big': 100, 'empty': 0, 'ok': 5,
                                  '__pycache__/m.pyc': 5})
    os.link(os.path.join(root, 'ok'), os.path.join(root, 'ok2'))
    os.symlink(os.path.join(root, 'ok'), os.path.join(root, 'sym'))
    chosen = volume.select_files(10 ** 6, roots=(root,), max_bytes=50)
    assert [os.path.basename(p) for p, _ in chosen] == ['ok']


def test_stage_fixes_modes_and_times(tmp_path):
    src = _tree(tmp_path / 'src', {'tool': 3, 'doc.txt': 4})
    os.chmod(os.path.join(src, 'tool'), 0o700)
    os.chmod(os.path.join(src, 'doc.txt'), 0o600)
    files = volume.select_files(100, roots=(src,))
    staging = str(tmp_path / 'staging')
    assert volume.stage(files, staging) == 7
    tool = os.path.join(staging, src.lstrip('/'), 'tool')
    doc = os.path.join(staging, src.lstrip('/'), 'doc.txt')
    assert os.stat(tool).st_mode & 0o7777 == 0o755
    assert os.stat(doc).st_mode & 0o7777 == 0o644
    assert os.stat(doc).st_mtime == volume.FIXED_TIME
    assert os.stat(staging).st_mtime == volume.FIXED_TIME


def test_manifest_digest_tracks_paths_and_sizes():
    one = volume.manifest_digest([('/a', 1)])
    assert one == volume.manifest_digest([('/a', 1)])
    assert one != volume.manifest_digest([('/a', 2)])


def test_build_commands():
    cmd = volume.mkfs_cmd('/w/v.raw', '/w/staging')
    assert cmd[0] == 'mkfs.ext4' and cmd[-1] == '/w/v.raw'
    assert cmd[cmd.index('-d') + 1] == '/w/staging'
    assert 'lazy_itable_init=0' in cmd[cmd.index('-E') + 1]
    assert volume.FS_UUID in cmd[cmd.index('-U') + 1]
    assert volume.qcow2_cmd('/w/v.raw', '/w/v.qcow2') == [
        'qemu-img', 'convert', '-f', 'raw', '-O', 'qcow2', '/w/v.raw',
        '/w/v.qcow2']
    assert volume.volume_name(8, 3) == 'volume-8g-3gb'
    assert volume.volume_name(1, 0.3) == 'volume-1g-0.3gb'


def test_warm_reads_only_data(tmp_path):
    path = str(tmp_path / 'sparse')
    with open(path, 'wb') as f:
        f.truncate(64 << 20)
        f.seek(8 << 20)
        f.write(b'd' * (1 << 20))
    if common.allocated(path) >= 64 << 20:
        pytest.skip('file system without holes')
    assert common.warm(path) == 1 << 20


def test_run_tool_measures_and_reports_failure(tmp_path):
    out = str(tmp_path / 'out')
    m = common.run_tool([sys.executable, '-c', 'print("hi")'], stdout=out)
    assert open(out).read() == 'hi\n'
    assert m.wall > 0 and m.cpu > 0 and m.maxrss > 1 << 20
    with pytest.raises(common.BenchError, match='boom'):
        common.run_tool([sys.executable, '-c',
                         'import sys; sys.exit("boom")'])


def test_percentile_nearest_rank():
    samples = [float(i) for i in range(1, 101)]
    assert common.percentile(samples, 0.50) == 50.0
    assert common.percentile(samples, 0.99) == 99.0
    assert common.percentile([3.0], 0.99) == 3.0


def _row(op, tool, wall, size, base=None, rss=10 ** 7):
    return common.Row(op, tool, common.Measurement(wall, wall, rss), size,
                      size, base)


def test_rows_table_and_targets():
    gz = _row('compress', 'gzip -6', 97.0, 1000)
    eng = _row('compress', 'engine: isal', 2.5, 1110, gz)
    assert eng.speedup() == pytest.approx(38.8)
    assert eng.size_ratio() == pytest.approx(1.11)
    text = common.table([gz, eng])
    assert '38.80x' in text and text.count('\n') == 3
    verdicts = bench_engine.check_targets([gz, eng])
    assert 'PASS compress speed-up 38.8x' in verdicts[0]
    assert verdicts[1].startswith('SKIP decompress')
    assert verdicts[-1].startswith('PASS compress peak RSS')
    slow = _row('compress', 'engine: gzip', 40.0, 1000, gz, rss=400 << 20)
    verdicts = bench_engine.check_targets([gz, slow])
    assert verdicts[0].startswith('FAIL') and verdicts[-1].startswith('FAIL')
