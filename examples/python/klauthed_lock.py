"""klauthed lock from Python: the scripts in ../../scripts through redis-py.

Leases taken here interoperate with Go services using lockredis (and with
the Node helper) on the same Redis: same scripts (protocol 2: a FIFO line
per key), same key names, same token format. Needs redis-py (Debian:
``apt-get install python3-redis``, then run with ``/usr/bin/python3``; a
pyenv or venv python does not see Debian's packages).

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
    locks.close()  # stops the Pub/Sub listener

Waiting (LockClient.acquire) takes a place in the key's line in Redis,
shared with Go and Node waiters, and is served in line order: see
LockClient.acquire.

Run ``python3 klauthed_lock.py worker HOST:PORT [PREFIX] [--poll]`` for the
line protocol the interop test (examples/interop_test.go) drives.
"""

import base64
import secrets
import sys
import threading
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

#: How long a waiter's place in line lasts unless kept alive (lockredis:
#: DefaultLineTTL); a waiter keeps it alive every line_ttl_ms / 3.
DEFAULT_LINE_TTL_MS = 3000
#: The shortest line TTL a waiter accepts (lockredis: 30ms): the keep-alive
#: every line_ttl_ms / 3 must leave room for a round trip.
MIN_LINE_TTL_MS = 30


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


def key_names(key, prefix=DEFAULT_PREFIX):
    """Return the five names the acquire and release scripts take, in their
    KEYS order: lock, fence, line, line deadlines, line args. The line's
    names append ":line", ":line:deadlines" and ":line:args" to the lock
    key, so all five share its hash tag."""
    lock_key, fence_key = lock_keys(key, prefix)
    return (lock_key, fence_key, lock_key + ":line", lock_key + ":line:deadlines",
            lock_key + ":line:args")


def _check(key, ttl_ms):
    if not isinstance(key, str) or key == "" or len(key.encode("utf-8")) > MAX_KEY_LEN:
        raise ValueError("klauthed: invalid key %r: want 1 to %d bytes" % (key, MAX_KEY_LEN))
    if isinstance(ttl_ms, bool) or not isinstance(ttl_ms, int) or not MIN_TTL_MS <= ttl_ms <= MAX_TTL_MS:
        raise ValueError("klauthed: invalid ttl_ms %r: want an int from %d to %d" % (ttl_ms, MIN_TTL_MS, MAX_TTL_MS))


def _check_line_ttl(line_ttl_ms):
    if (isinstance(line_ttl_ms, bool) or not isinstance(line_ttl_ms, int)
            or not MIN_LINE_TTL_MS <= line_ttl_ms <= MAX_TTL_MS):
        raise ValueError("klauthed: invalid line_ttl_ms %r: want an int from %d to %d"
                         % (line_ttl_ms, MIN_LINE_TTL_MS, MAX_TTL_MS))


def _text(b):
    return b.decode("utf-8") if isinstance(b, bytes) else b


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
        """Free the key if this lease still holds it, handing it to the head
        of the key's line if anyone waits. Returns True if it did; False if
        the lease had already ended (expired, released), in which case
        nothing changed: a stale lease never frees the next holder's lock.
        Safe to call twice."""
        return self._client._release_token(self.key, self.token)

    def __repr__(self):
        return "Lease(key=%r, fence=%d)" % (self.key, self.fence)


# What the scripts ask before a hand-off to a strict channel.
_NUMSUB = "return redis.call('PUBSUB', 'NUMSUB', ARGV[1])[2]"


class _Waiter:
    """One acquire call in line: its event is set when it should try again
    at once (a hand-off published for its token, or Pub/Sub came back)."""

    __slots__ = ("event",)

    def __init__(self):
        self.event = threading.Event()


class LockClient:
    """Leases on string keys, stored by the klauthed scripts in the Redis
    behind `r` (a redis.Redis). The scripts run with EVALSHA and fall back
    to EVAL on NOSCRIPT (register_script).

    With pubsub=True (the default) the client subscribes, on a connection of
    its own and in a daemon thread, to its channel prefix + "wake:" + 24 hex
    digits + "!", where release scripts publish the hand-offs to its waiters.
    The "!" makes the channel strict (scripts/README.md, "Tokens and
    channels"): a release skips a waiter of this client whose channel nobody
    hears (its process was killed) instead of handing it the key, so use
    this client on one server, not on Redis Cluster. Waiters give the
    scripts the channel only while subscribed. With pubsub=False, or when the
    server refuses SUBSCRIBE, or while the subscription is down, waiters
    poll (see acquire). Call close() when done. A LockClient is safe to use
    from several threads."""

    def __init__(self, r, prefix=DEFAULT_PREFIX, pubsub=True):
        self.prefix = prefix
        self._acquire = r.register_script(_script("acquire"))
        self._refresh = r.register_script(_script("refresh"))
        self._release = r.register_script(_script("release"))
        self._inspect = r.register_script(_script("inspect"))
        self._mu = threading.Lock()
        self._waiters = {}  # token -> _Waiter, for acquire calls in line
        self._closed = threading.Event()
        self._subscribed = threading.Event()
        self._thread = None
        #: The channel that this client's waiters give the scripts while it
        #: is subscribed; "" when they poll only.
        self.channel = ""
        if pubsub:
            self.channel = prefix + "wake:" + secrets.token_hex(12) + "!"
            self._thread = threading.Thread(target=self._listen, args=(r,),
                                            name="klauthed-wake", daemon=True)
            self._thread.start()

    def close(self):
        """Stop the Pub/Sub listener. Waiters still in acquire poll."""
        self._closed.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(2.0)

    def wait_subscribed(self, timeout):
        """Wait up to `timeout` seconds for the Pub/Sub subscription; return
        whether it is up. Waiting works without it, more slowly."""
        return self._subscribed.wait(timeout)

    def try_acquire(self, key, ttl_ms, token=None):
        """Make one attempt, never joining the key's line (line ttl 0).
        Returns (lease, 0) on success, or (None, pttl) while another token
        holds the key or others wait in its line (then the key is handed to
        the line's head, and pttl is that holder's remaining milliseconds;
        -1 if its key has no expiry). Redis errors (a key of the wrong type,
        ...) raise redis.ResponseError and write nothing."""
        _check(key, ttl_ms)
        token = token or new_token()
        acquired, fence, pttl, _ = self._acquire(keys=key_names(key, self.prefix),
                                                 args=[token, ttl_ms, 0, ""])
        if acquired == 1:
            return Lease(self, key, token, fence), 0
        return None, pttl

    def acquire(self, key, ttl_ms, wait=None, line_ttl_ms=DEFAULT_LINE_TTL_MS):
        """Take key for ttl_ms milliseconds, waiting up to `wait` seconds
        (None: forever) while another holder has it. Returns the Lease, or
        None when the wait ended with the key still held. wait <= 0 is
        try_acquire.

        One token for the whole wait. Each attempt runs the acquire script
        with it and line_ttl_ms, which takes the key, or else keeps this
        token's place in the key's line (joining at its tail the first time)
        alive for line_ttl_ms. When the holder releases, the release script
        sets the key to the line head's token and publishes the hand-off on
        the head's channel. Between attempts the waiter sleeps until, first:
        a hand-off for its token arrives on this client's channel (or a
        release by this client hands it the key, or the subscription comes
        back); line_ttl_ms / 3 passed (the keep-alive); or the holder's PTTL
        ran out (+1 ms, +1 ms per place behind the head, at most 50). A
        holder without expiry (PTTL -1) leaves the keep-alive. Without
        Pub/Sub that is polling. Whatever woke it, the next attempt (same
        token) is what returns the lease: a hand-off shows as the lock
        holding this token, {1, fence, ttl, 0}, and the attempt restarts
        the lease's TTL.

        When the wait ends (deadline, error, interrupt) it runs the release
        script with the token, which takes it out of the line or, if the key
        was handed to it meanwhile, releases the key to the next in line."""
        _check(key, ttl_ms)
        if wait is not None and wait <= 0:
            return self.try_acquire(key, ttl_ms)[0]
        _check_line_ttl(line_ttl_ms)
        names = key_names(key, self.prefix)
        token = new_token()
        deadline = None if wait is None else time.monotonic() + wait
        keep = line_ttl_ms / 3000.0
        w = _Waiter()
        # Registered before the first attempt: a release may hand the key to
        # this token before the attempt's reply arrives.
        with self._mu:
            self._waiters[token] = w
        try:
            while True:
                w.event.clear()  # a wake-up during the attempt still counts
                # The channel only while subscribed (it is strict); the
                # subscription coming or going wakes this waiter, so its
                # next attempt brings its place up to date.
                channel = self.channel if self._subscribed.is_set() else ""
                acquired, fence, pttl, position = self._acquire(
                    keys=names, args=[token, ttl_ms, line_ttl_ms, channel])
                if acquired == 1:
                    return Lease(self, key, token, fence)
                sleep = keep
                if pttl > 0:
                    sleep = min(sleep, (pttl + 1 + min(max(position - 1, 0), 50)) / 1000.0)
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        self._release_token(key, token)
                        return None
                    sleep = min(sleep, left)
                w.event.wait(sleep)
        except BaseException:
            # Leave the line, or free a key handed to us meanwhile; the
            # original error is what the caller needs to see.
            try:
                self._release_token(key, token)
            except Exception:
                pass
            raise
        finally:
            with self._mu:
                del self._waiters[token]

    def inspect(self, key):
        """Read the key without writing: (token, pttl) of its holder, or
        (None, 0) when it is free."""
        lock_key, _ = lock_keys(key, self.prefix)
        token, pttl = self._inspect(keys=[lock_key])
        if token is None:
            return None, 0
        return _text(token), pttl

    def _release_token(self, key, token):
        # The release script: frees the key if token holds it, else takes
        # token out of the line; hands a freed key to the line's head. It
        # does not publish to this client's own channel: the reply names
        # the head, and a waiter of this client is woken here.
        released, nxt, _, _ = self._release(keys=key_names(key, self.prefix),
                                            args=[token, self.channel])
        if nxt is not None:
            self._wake(_text(nxt))
        return released == 1

    def _wake(self, token):
        with self._mu:
            w = self._waiters.get(token)
        if w is not None:
            w.event.set()

    def _wake_all(self):
        with self._mu:
            waiters = list(self._waiters.values())
        for w in waiters:
            w.event.set()

    def _seen_by_scripts(self, r):
        # Whether the scripts see this client's subscription (they ask
        # PUBSUB NUMSUB before a hand-off to a strict channel): behind a
        # proxy that keeps subscriptions away from the servers running the
        # scripts they would not, and every waiter of this client would be
        # skipped; it then polls instead. A refusal or failure counts as
        # seen: the scripts then count every waiter as hearing anyway.
        try:
            return r.eval(_NUMSUB, 0, self.channel) != 0
        except redis.RedisError:
            return True

    def _listen(self, r):
        # Keeps a PubSub connection subscribed to self.channel until close.
        # Each (re)subscription wakes all waiters: a hand-off may have been
        # published while nobody listened. A server or ACL that refuses
        # SUBSCRIBE leaves the waiters polling.
        backoff = 0.01
        while not self._closed.is_set():
            ps = r.pubsub()
            try:
                ps.subscribe(self.channel)
                while not self._closed.is_set():
                    msg = ps.get_message(timeout=0.2)
                    if msg is None:
                        continue
                    if msg["type"] == "subscribe":
                        backoff = 0.01
                        if self._seen_by_scripts(r):
                            self._subscribed.set()
                            self._wake_all()
                    elif msg["type"] == "message":
                        # "fence ttl token": wake the token's waiter, whose
                        # next attempt returns the lease.
                        parts = _text(msg["data"]).split(" ", 2)
                        if len(parts) == 3:
                            self._wake(parts[2])
            except redis.ResponseError:
                return  # refused (NOPERM, unknown command): poll instead
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                pass
            finally:
                if self._subscribed.is_set():
                    self._subscribed.clear()
                    self._wake_all()  # to poll, with no channel, until back
                try:
                    ps.close()
                except Exception:
                    pass
            self._closed.wait(backoff)
            backoff = min(backoff * 2, 1.0)


def worker(addr, prefix=DEFAULT_PREFIX, pubsub=True, inp=sys.stdin, out=sys.stdout):
    """Serve the interop test's line protocol on inp/out, one reply line per
    command line, holding at most one lease:

        acquire KEY TTL_MS WAIT_MS [LINE_TTL_MS]
                                   -> "acquired FENCE TOKEN" | "timeout"
        try KEY TTL_MS             -> "acquired FENCE TOKEN" | "held PTTL"
        refresh TTL_MS             -> "refreshed 1" | "refreshed 0"
        release                    -> "released 1" | "released 0"
        rmw KEY SLEEP_MS           -> "value N"  (GET, sleep, SET N=old+1: not atomic)
        keys KEY                   -> "keys LOCK FENCE LINE LINE_DEADLINES LINE_ARGS"
        quit / end of input        -> exit

    With pubsub it says "ready" once subscribed (or after 5 s without);
    without it, its waiters poll. Any failure replies "error MESSAGE" and
    keeps serving.
    """
    host, _, port = addr.rpartition(":")
    r = redis.Redis(host=host, port=int(port))
    locks = LockClient(r, prefix, pubsub=pubsub)
    if pubsub and not locks.wait_subscribed(5.0):
        print("klauthed worker: not subscribed after 5 s; polling", file=sys.stderr, flush=True)
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
                line_ttl = int(f[4]) if len(f) > 4 else DEFAULT_LINE_TTL_MS
                got = locks.acquire(f[1], int(f[2]), wait=int(f[3]) / 1000.0, line_ttl_ms=line_ttl)
                if got is None:
                    reply = "timeout"
                else:
                    lease = got
                    reply = "acquired %d %s" % (lease.fence, lease.token)
            elif cmd == "try":
                got, pttl = locks.try_acquire(f[1], int(f[2]))
                if got is None:
                    reply = "held %d" % pttl
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
                reply = "keys " + " ".join(key_names(f[1], prefix))
            else:
                reply = "error unknown command %r" % cmd
        except Exception as e:  # report and keep serving: the test decides
            reply = "error %s: %s" % (type(e).__name__, str(e).replace("\n", " "))
        print(reply, file=out, flush=True)
    locks.close()


if __name__ == "__main__":
    args = sys.argv[1:]
    poll = "--poll" in args
    args = [a for a in args if a != "--poll"]
    if len(args) < 2 or args[0] != "worker":
        sys.exit("usage: klauthed_lock.py worker HOST:PORT [PREFIX] [--poll]")
    worker(args[1], *args[2:3], pubsub=not poll)
