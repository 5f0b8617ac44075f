"""klauthed lock from Python: the scripts in ../../scripts through redis-py.

Leases taken here interoperate with Go services using lockredis (and with
the Node helper) on the same Redis: same scripts, same key names, same
token format. Needs redis-py (Debian: ``apt-get install python3-redis``,
then run with ``/usr/bin/python3``; a pyenv or venv python does not see
Debian's packages).

    import redis
    from klauthed_lock import LockClient

    locks = LockClient(redis.Redis(host="127.0.0.1", port=6379))
    lease = locks.acquire("orders/42", ttl_ms=30000, wait=5.0)
    if lease is None:
        ...  # still held by someone else after 5 s
    try:
        ...  # work; pass lease.fence to storage; lease.refresh(30000) if long
    finally:
        lease.release()

Run ``python3 klauthed_lock.py worker HOST:PORT`` for the line protocol the
interop test (examples/interop_test.go) drives.
"""

import base64
import random
import secrets
import sys
import time
from pathlib import Path

import redis

#: Where the canonical scripts live: this file is examples/python/.
SCRIPTS_DIR = Path(__file__).resolve().parent.parent.parent / "scripts"

#: The key prefix Go's lockredis uses by default.
DEFAULT_PREFIX = "klauthed:"

#: Bounds every backend accepts (lock.MinTTL, lock.MaxTTL, lock.MaxKeyLen).
MIN_TTL_MS = 1
MAX_TTL_MS = 365 * 24 * 3600 * 1000
MAX_KEY_LEN = 64 << 10

# Polling bounds while waiting for a held key (lockredis: MinBackoff,
# MaxBackoff). A wait never sleeps past the holder's remaining TTL.
_MIN_BACKOFF = 0.001
_MAX_BACKOFF = 0.05


def _script(name):
    # Strip the final newline so the SHA1 matches `SCRIPT LOAD "$(cat ...)"`
    # and Go's gen.<Name>SHA1: all languages share one cached script.
    return (SCRIPTS_DIR / (name + ".lua")).read_text(encoding="utf-8").rstrip("\n")


def new_token():
    """Return a fresh token: 128 random bits as 22 characters of unpadded
    URL-safe base64, the format of Go's lock.NewToken."""
    return base64.urlsafe_b64encode(secrets.token_bytes(16)).rstrip(b"=").decode("ascii")


def lock_keys(key, prefix=DEFAULT_PREFIX):
    """Return (lock key, fence key) for user key `key`, exactly as lockredis
    builds them: prefix + "{" + key + "}" and that + ":fence", which share
    the hash tag {key} (one slot on Redis Cluster). A key starting with "}"
    would make the empty tag "{}", which Cluster ignores, so such a key gets
    prefix + "}{~}" + key + "}" (tag "~") instead."""
    opener = "}{~}" if key.startswith("}") else "{"
    lock_key = prefix + opener + key + "}"
    return lock_key, lock_key + ":fence"


def _check(key, ttl_ms):
    if not isinstance(key, str) or key == "" or len(key.encode("utf-8")) > MAX_KEY_LEN:
        raise ValueError("klauthed: invalid key %r: want 1 to %d bytes" % (key, MAX_KEY_LEN))
    if isinstance(ttl_ms, bool) or not isinstance(ttl_ms, int) or not MIN_TTL_MS <= ttl_ms <= MAX_TTL_MS:
        raise ValueError("klauthed: invalid ttl_ms %r: want an int from %d to %d" % (ttl_ms, MIN_TTL_MS, MAX_TTL_MS))


class Lease:
    """One acquisition of a key. ``fence`` grows with every acquisition of
    the key, in any language; pass it to storage that rejects stale
    writers. A Lease is not thread-safe."""

    def __init__(self, client, key, token, fence):
        self._client = client
        self.key = key
        self.token = token
        self.fence = fence
        self.lock_key, _ = lock_keys(key, client.prefix)

    def refresh(self, ttl_ms):
        """Set the lease's remaining time to ttl_ms. Returns True if the
        lease was still held; False (nothing changed) if it expired or was
        released: the lock is lost, stop working under it."""
        _check(self.key, ttl_ms)
        return self._client._refresh(keys=[self.lock_key], args=[self.token, ttl_ms]) == 1

    def release(self):
        """Free the key if this lease still holds it. Returns True if it
        did; False if the lease had already ended (expired, released),
        in which case nothing changed: a stale lease never frees the next
        holder's lock. Safe to call twice."""
        return self._client._release(keys=[self.lock_key], args=[self.token]) == 1

    def __repr__(self):
        return "Lease(key=%r, fence=%d)" % (self.key, self.fence)


class LockClient:
    """Leases on string keys, stored by the klauthed scripts in the Redis
    behind `r` (a redis.Redis or redis.cluster.RedisCluster). The scripts
    run with EVALSHA and fall back to EVAL on NOSCRIPT (register_script)."""

    def __init__(self, r, prefix=DEFAULT_PREFIX):
        self.prefix = prefix
        self._acquire = r.register_script(_script("acquire"))
        self._refresh = r.register_script(_script("refresh"))
        self._release = r.register_script(_script("release"))
        self._inspect = r.register_script(_script("inspect"))

    def try_acquire(self, key, ttl_ms, token=None):
        """Make one attempt. Returns (lease, 0) on success, or (None, pttl)
        while another token holds the key, with pttl the holder's remaining
        milliseconds (-1 if its key has no expiry). Redis errors (a key of
        the wrong type, ...) raise redis.ResponseError and write nothing."""
        _check(key, ttl_ms)
        token = token or new_token()
        lock_key, fence_key = lock_keys(key, self.prefix)
        acquired, fence, ttl = self._acquire(keys=[lock_key, fence_key], args=[token, ttl_ms])
        if acquired == 1:
            return Lease(self, key, token, fence), 0
        return None, ttl

    def acquire(self, key, ttl_ms, wait=None):
        """Take key for ttl_ms milliseconds, waiting up to `wait` seconds
        (None: forever) while another holder has it. Waiting polls with
        backoff from 1 ms to 50 ms, never sleeping past the holder's
        remaining TTL or the deadline. Returns the Lease, or None when the
        wait ended with the key still held."""
        deadline = None if wait is None else time.monotonic() + wait
        backoff = _MIN_BACKOFF
        token = new_token()  # one token for all attempts: a retry after a lost reply is idempotent
        while True:
            lease, pttl = self.try_acquire(key, ttl_ms, token)
            if lease is not None:
                return lease
            sleep = random.uniform(backoff / 2, backoff)
            if pttl > 0:
                sleep = min(sleep, pttl / 1000.0)
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                sleep = min(sleep, left)
            time.sleep(sleep)
            backoff = min(backoff * 2, _MAX_BACKOFF)

    def inspect(self, key):
        """Read the key without writing: (token, pttl) of its holder, or
        (None, 0) when it is free."""
        lock_key, _ = lock_keys(key, self.prefix)
        token, pttl = self._inspect(keys=[lock_key])
        if token is None:
            return None, 0
        return token.decode("utf-8") if isinstance(token, bytes) else token, pttl


def worker(addr, prefix=DEFAULT_PREFIX, inp=sys.stdin, out=sys.stdout):
    """Serve the interop test's line protocol on inp/out, one reply line per
    command line, holding at most one lease:

        acquire KEY TTL_MS WAIT_MS -> "acquired FENCE TOKEN" | "timeout"
        refresh TTL_MS             -> "refreshed 1" | "refreshed 0"
        release                    -> "released 1" | "released 0"
        rmw KEY SLEEP_MS           -> "value N"  (GET, sleep, SET N=old+1: not atomic)
        keys KEY                   -> "keys LOCK_KEY FENCE_KEY"
        quit / end of input        -> exit

    Any failure replies "error MESSAGE" and keeps serving.
    """
    host, _, port = addr.rpartition(":")
    r = redis.Redis(host=host, port=int(port))
    locks = LockClient(r, prefix)
    lease = None
    print("ready", file=out, flush=True)
    for line in inp:
        f = line.split()
        try:
            if not f:
                continue
            cmd = f[0]
            if cmd == "quit":
                break
            if cmd == "acquire":
                got = locks.acquire(f[1], int(f[2]), wait=int(f[3]) / 1000.0)
                if got is None:
                    reply = "timeout"
                else:
                    lease = got
                    reply = "acquired %d %s" % (lease.fence, lease.token)
            elif cmd == "refresh":
                reply = "refreshed %d" % lease.refresh(int(f[1]))
            elif cmd == "release":
                reply = "released %d" % lease.release()
            elif cmd == "rmw":
                n = int(r.get(f[1]) or 0) + 1
                time.sleep(int(f[2]) / 1000.0)
                r.set(f[1], n)
                reply = "value %d" % n
            elif cmd == "keys":
                reply = "keys %s %s" % lock_keys(f[1], prefix)
            else:
                reply = "error unknown command %r" % cmd
        except Exception as e:  # report and keep serving: the test decides
            reply = "error %s: %s" % (type(e).__name__, str(e).replace("\n", " "))
        print(reply, file=out, flush=True)


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] != "worker":
        sys.exit("usage: klauthed_lock.py worker HOST:PORT [PREFIX]")
    worker(sys.argv[2], *sys.argv[3:4])
