#!/usr/bin/python3
"""sum_client.py: a client for tinyinetd-sum's binary protocol.

    sum_client.py HOST PORT A B [A B ...]

Sends every pair as one 16-byte request (two big-endian signed 64-bit
integers) in a single write, then reads the 9-byte replies (a status byte,
0 ok or 1 overflow, and the big-endian sum) and prints one line per pair:
"A + B = SUM" or "A + B: overflow".
"""
import socket
import struct
import sys


def explain_bad_reply(data, requests):
    """Why the reply is not 9 bytes a request, in words a user can act on."""
    if data.endswith(b"\n") and all(32 <= b < 127 or b == 10 for b in data):
        first = data.decode("ascii").splitlines()[0]
        return (
            'sum_client.py: the server answered in text ("%s"): it looks like '
            "tinyinetd-sum in text mode, and this client speaks the binary "
            'protocol; give the service args = ["--binary"]\n' % first
        )
    return "sum_client.py: short reply: %d bytes for %d requests (expected %d)\n" % (
        len(data),
        requests,
        9 * requests,
    )


def main(argv):
    if len(argv) < 5 or (len(argv) - 3) % 2:
        sys.stderr.write(__doc__)
        return 2
    host, port = argv[1], int(argv[2])
    nums = [int(x) for x in argv[3:]]
    pairs = list(zip(nums[0::2], nums[1::2]))
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(b"".join(struct.pack(">qq", a, b) for a, b in pairs))
        s.shutdown(socket.SHUT_WR)
        data = b""
        while len(data) < 9 * len(pairs):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    if len(data) != 9 * len(pairs):
        sys.stderr.write(explain_bad_reply(data, len(pairs)))
        return 1
    for (a, b), off in zip(pairs, range(0, len(data), 9)):
        status, total = struct.unpack(">Bq", data[off:off + 9])
        print("%d + %d = %d" % (a, b, total) if status == 0 else "%d + %d: overflow" % (a, b))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
