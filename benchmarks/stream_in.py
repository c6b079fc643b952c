# SPDX-License-Identifier: Apache-2.0
"""Create-volume-from-image's data path, staged against streamed, through
one real accel-daemon (privsep backend, real RabbitMQ), side by side:

staged
    what cinder does today with the daemon: the gzip'd image arrives in
    64 KiB chunks (glanceclient's) and is written to a file in the
    conversion directory, then the daemon's ``download`` decompresses,
    inspects and writes the volume file.
streamed
    the same chunks go to ``AccelClient.stream_in`` (API 1.4): the daemon
    inflates them in its unprivileged child, inspects the start and writes
    the volume file directly.

The image: a raw volume of ``--size-mib`` with data in a quarter of it
(random 1 MiB blocks every 4 MiB), gzip'd with ``gzip -1``, read from a
file outside the daemon's directories (page-cached: the "network" costs
the same on both paths).  Runs alternate (staged first, then streamed
first), the volume and the staged file are removed and written back
between runs.  Prints wall seconds (median, min-max), the bytes the
caller staged, and whether every volume matched.

    sudo .venv/bin/python benchmarks/stream_in.py [--size-mib 1024] [--runs 5]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_daemon  # noqa: E402

MiB = 1024 * 1024
CHUNK = 64 * 1024
TRANSPORT = os.environ.get('ACCEL_BENCH_TRANSPORT',
                           'rabbit://guest:guest@127.0.0.1:5672/')


def make_image(work: str, size: int) -> tuple[str, str]:
    raw = os.path.join(work, 'image.raw')
    with open(raw, 'wb') as f:
        f.truncate(size)
        for off in range(0, size, 4 * MiB):
            f.seek(off)
            f.write(os.urandom(MiB))
    gz = raw + '.gz'
    with open(gz, 'wb') as out:
        subprocess.run(['gzip', '-1', '-c', '-n', raw], stdout=out,
                       check=True)
    return raw, gz


def chunks(path: str):
    with open(path, 'rb') as f:
        while chunk := f.read(CHUNK):
            yield chunk


def digest(path: str, size: int) -> str:
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        while chunk := f.read(8 * MiB):
            h.update(chunk)
    return h.hexdigest()


def staged(client, gz: str, images: str, dst: str) -> tuple[float, int]:
    started = time.monotonic()
    tmp = os.path.join(images, 'image_download.gz')
    with open(tmp, 'wb') as f:
        for chunk in chunks(gz):
            f.write(chunk)
    peak = os.stat(tmp).st_blocks * 512
    client.download(tmp, dst, 'raw', 'raw', container='gzip').wait(3600)
    os.unlink(tmp)
    return time.monotonic() - started, peak


def streamed(client, gz: str, images: str, dst: str) -> tuple[float, int]:
    started = time.monotonic()
    writer = client.stream_in(dst, 'raw', 'raw', container='gzip')
    for chunk in chunks(gz):
        writer.write(chunk)
    writer.close()
    return time.monotonic() - started, 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--size-mib', type=int, default=1024)
    parser.add_argument('--runs', type=int, default=5)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix='accel-bench-stream-', dir='/var/tmp')
    raw, gz = make_image(work, args.size_mib * MiB)
    want = digest(raw, args.size_mib * MiB)
    gz_size = os.path.getsize(gz)
    daemon = bench_daemon.Daemon(os.path.join(work, 'daemon'), TRANSPORT)
    daemon.start()
    times: dict[str, list[float]] = {'staged': [], 'streamed': []}
    peaks: dict[str, int] = {'staged': 0, 'streamed': 0}
    ok = True
    try:
        with daemon.client() as client:
            for i in range(args.runs):
                order = [('staged', staged), ('streamed', streamed)]
                if i % 2:
                    order.reverse()
                for name, flow in order:
                    dst = os.path.join(daemon.images, 'volume.raw')
                    subprocess.run(['sync'], check=True)
                    seconds, peak = flow(client, gz, daemon.images, dst)
                    times[name].append(seconds)
                    peaks[name] = max(peaks[name], peak)
                    ok = ok and digest(dst, args.size_mib * MiB) == want
                    os.unlink(dst)
    finally:
        daemon.stop()
        subprocess.run(['rm', '-rf', work], check=False)
    base = statistics.median(times['staged'])
    print('create-volume-from-image data path: %d MiB raw volume, gzip -1 '
          'image of %d MiB, %d runs each, interleaved'
          % (args.size_mib, gz_size // MiB, args.runs))
    print('%-9s %8s %17s %8s %14s' % ('path', 'median', 'min-max', 'speedup',
                                      'caller staged'))
    for name in ('staged', 'streamed'):
        t = times[name]
        print('%-9s %7.2fs %7.2f-%6.2fs %7.2fx %11d MiB' % (
            name, statistics.median(t), min(t), max(t),
            base / statistics.median(t), peaks[name] // MiB))
    print('every volume matched the image: %s' % ('yes' if ok else 'NO'))
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
