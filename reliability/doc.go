// Package reliability holds the tests that try to break klauthed lock from
// the outside: a fault-injection suite with a history checker (TestFaults),
// failover measurements on a primary/replica pair (TestFailover_*), Redis
// restarts with and without persistence (TestRestart_*), and security tests
// (tokens, ACL users, TLS).
//
// It is a module of its own so that its test-only dependencies (toxiproxy,
// porcupine) never enter the library's go.mod. Everything runs against real
// redis-server processes started by internal/redistest; the tests fail, not
// skip, when redis-server is missing.
//
// Run the fault suite with
//
//	cd reliability && go test -race -run TestFaults -v .
//
// Its last output line is the figures line: clients, acquisitions, waits
// seen queued in the hot key's line and hand-offs to them, faults by kind,
// violations of the history checks, hangs, starved waiters, and losses
// (false: reported while Redis still held the token, which fails the run;
// real; unknown: Redis could not be asked; expired: decided on the local
// clock). RELIABILITY_ROUNDS (default 3) sets how many rounds of every
// fault kind it injects.
package reliability
