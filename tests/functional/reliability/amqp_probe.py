# SPDX-License-Identifier: Apache-2.0
"""Log in to an AMQP 0-9-1 broker and open a virtual host, as a local user
might: standard library only (it runs as a throwaway unprivileged user with
the system's python3, which cannot read the test venv).

    amqp_probe.py HOST PORT VHOST        (user and password on stdin, one
                                          line each)

Prints one word: ``open`` (the broker admitted the user to the virtual
host), ``refused-login`` (it closed the connection on the credentials),
``refused-vhost`` (it logged the user in and refused the virtual host), or
``error: ...``.
"""

import socket
import struct
import sys

FRAME_METHOD = 1
FRAME_END = b'\xce'


def shortstr(s: bytes) -> bytes:
    return struct.pack('B', len(s)) + s


def longstr(s: bytes) -> bytes:
    return struct.pack('>I', len(s)) + s


def send_method(sock, class_id, method_id, args):
    payload = struct.pack('>HH', class_id, method_id) + args
    sock.sendall(struct.pack('>BHI', FRAME_METHOD, 0, len(payload))
                 + payload + FRAME_END)


def read_exact(sock, n):
    data = b''
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


def read_method(sock):
    """(class id, method id, arguments) of the next method frame."""
    while True:
        kind, _channel, size = struct.unpack('>BHI', read_exact(sock, 7))
        payload = read_exact(sock, size)
        read_exact(sock, 1)
        if kind == FRAME_METHOD:
            class_id, method_id = struct.unpack('>HH', payload[:4])
            return class_id, method_id, payload[4:]


def probe(host, port, vhost, user, password):
    sock = socket.create_connection((host, port), timeout=10)
    try:
        sock.sendall(b'AMQP\x00\x00\x09\x01')
        if read_method(sock)[:2] != (10, 10):          # connection.start
            return 'error: no connection.start'
        send_method(sock, 10, 11,                        # start-ok
                    struct.pack('>I', 0) + shortstr(b'PLAIN')
                    + longstr(b'\0' + user + b'\0' + password)
                    + shortstr(b'en_US'))
        try:
            reply = read_method(sock)
        except (EOFError, ConnectionError):
            return 'refused-login'
        if reply[:2] == (10, 50):                        # connection.close
            return 'refused-login'
        if reply[:2] != (10, 30):                        # connection.tune
            return 'error: unexpected %r' % (reply[:2],)
        channel_max, frame_max, _ = struct.unpack('>HIH', reply[2][:8])
        send_method(sock, 10, 31, struct.pack('>HIH', channel_max,
                                              frame_max, 0))
        send_method(sock, 10, 40, shortstr(vhost) + shortstr(b'') + b'\0')
        try:
            reply = read_method(sock)
        except (EOFError, ConnectionError):
            return 'refused-vhost'
        if reply[:2] == (10, 41):                        # open-ok
            return 'open'
        if reply[:2] == (10, 50):
            return 'refused-vhost'
        return 'error: unexpected %r' % (reply[:2],)
    finally:
        sock.close()


def main():
    host, port, vhost = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    user = sys.stdin.readline().rstrip('\n').encode()
    password = sys.stdin.readline().rstrip('\n').encode()
    try:
        print(probe(host, port, vhost.encode(), user, password))
    except Exception as e:
        print('error: %s: %s' % (type(e).__name__, e))


if __name__ == '__main__':
    main()
