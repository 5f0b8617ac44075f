package gen

import (
	"context"
	"errors"

	"github.com/redis/rueidis"
)

// errNotSent is the error of a Pending whose Batch was not sent yet.
var errNotSent = errors.New("gen: batch not sent")

// Pending is the outcome of one call in a Batch, known once the Batch's Do
// returned. The zero value reports errNotSent.
type Pending[T any] struct {
	v    T
	err  error
	done bool
}

// Result returns the call's decoded reply, or its error: as for the typed
// call of the same script (a Redis error reply as a *rueidis.RedisError, a
// network or context error, or an unexpected reply shape). Before Do it
// returns the zero T and an error.
func (p *Pending[T]) Result() (T, error) {
	if !p.done {
		var zero T
		return zero, errNotSent
	}
	return p.v, p.err
}

// Batch sends script calls and plain rueidis commands together in one
// c.DoMulti, in the order they were added. rueidis sends a batch holding a
// blocking command, such as WAIT, on one dedicated connection, so WAIT
// counts the replicas of the writes before it. The zero Batch is not
// usable: call NewBatch. A Batch is sent once and must not be copied or
// used from several goroutines.
//
// Script calls go as EVALSHA (EVALSHA_RO for read-only scripts). When a
// script call meets NOSCRIPT (the server lost its script cache: restart,
// SCRIPT FLUSH, failover), Do sends a second DoMulti holding, in their
// order, every script call that met NOSCRIPT, now as EVAL with the source
// (which also loads it), and every plain command added after the first of
// them, so that a WAIT again follows the writes it is to count. Only add
// plain commands that may run twice (WAIT, reads).
type Batch struct {
	c     rueidis.Client
	calls []call
}

// call is one entry of a Batch: a script call (sha set) or a plain command.
type call struct {
	sha, src   string
	ro         bool
	keys, args []string
	cmd        rueidis.Completed // plain command, pinned so it can be re-sent
	set        func(rueidis.RedisResult)
}

// NewBatch returns an empty Batch sending through c.
func NewBatch(c rueidis.Client) *Batch { return &Batch{c: c} }

// Add adds a plain command, built with c.B() of the Batch's client. Its
// Pending holds the raw result; Result's error is the result's Error().
func (b *Batch) Add(cmd rueidis.Completed) *Pending[rueidis.RedisResult] {
	p := new(Pending[rueidis.RedisResult])
	b.calls = append(b.calls, call{cmd: cmd.Pin(), set: func(r rueidis.RedisResult) {
		p.v, p.err, p.done = r, r.Error(), true
	}})
	return p
}

// script adds a script call; set decodes its reply.
func (b *Batch) script(sha, src string, ro bool, keys, args []string,
	set func(rueidis.RedisResult)) {
	b.calls = append(b.calls, call{sha: sha, src: src, ro: ro, keys: keys, args: args, set: set})
}

// build returns the command of c: a plain command, or the script call as
// EVALSHA or, with eval, as EVAL (the _RO forms for read-only scripts).
func (b *Batch) build(c *call, eval bool) rueidis.Completed {
	if c.sha == "" {
		return c.cmd
	}
	n := int64(len(c.keys))
	cb := b.c.B()
	switch {
	case eval && c.ro:
		return cb.EvalRo().Script(c.src).Numkeys(n).Key(c.keys...).Arg(c.args...).Build()
	case eval:
		return cb.Eval().Script(c.src).Numkeys(n).Key(c.keys...).Arg(c.args...).Build()
	case c.ro:
		return cb.EvalshaRo().Sha1(c.sha).Numkeys(n).Key(c.keys...).Arg(c.args...).Build()
	default:
		return cb.Evalsha().Sha1(c.sha).Numkeys(n).Key(c.keys...).Arg(c.args...).Build()
	}
}

// Do sends the batch (and, after NOSCRIPT, the second batch described on
// Batch) and fills every Pending. It returns when all replies are in or ctx
// ended; errors are in the Pendings.
func (b *Batch) Do(ctx context.Context) {
	cmds := make([]rueidis.Completed, len(b.calls))
	for i := range b.calls {
		cmds[i] = b.build(&b.calls[i], false)
	}
	res := b.c.DoMulti(ctx, cmds...)
	var again []int // indexes of the calls re-sent
	for i := range b.calls {
		if b.calls[i].sha != "" && isNoScript(res[i].Error()) {
			again = append(again, i)
		} else if len(again) > 0 && b.calls[i].sha == "" {
			again = append(again, i)
		}
	}
	if len(again) > 0 {
		cmds = cmds[:0]
		for _, i := range again {
			cmds = append(cmds, b.build(&b.calls[i], true))
		}
		for j, r := range b.c.DoMulti(ctx, cmds...) {
			res[again[j]] = r
		}
	}
	for i := range b.calls {
		b.calls[i].set(res[i])
	}
}

func isNoScript(err error) bool {
	re, ok := rueidis.IsRedisErr(err)
	return ok && re.IsNoScript()
}
