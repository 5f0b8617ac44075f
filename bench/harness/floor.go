package harness

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/redis/rueidis"
)

// PushFloor measures the least time a hand-off woken by Redis can take on
// this machine and target: the median of n samples, each from one client
// calling a one-line script (EVALSHA) that PUBLISHes to a channel until
// another client, subscribed on a dedicated connection and otherwise idle,
// sees the message in its Pub/Sub hook (as lockredis's waiters do). Between
// samples the publisher pauses for pause, as a holder does while it holds
// the key, so that the subscriber wakes from idle as a waiter does. With
// procs the subscriber is another process (this executable started again,
// as a contended-procs waiter is), and times cross as wall-clock Unix
// nanoseconds. A lock whose waiters are woken by Redis cannot hand over
// faster than this; PING, whose caller is busy waiting for its own reply,
// can be much shorter.
func PushFloor(ctx context.Context, t *Target, channel string, n int, pause time.Duration,
	procs bool) (time.Duration, error) {
	opt, err := t.RueidisOption()
	if err != nil {
		return 0, err
	}
	pub, err := rueidis.NewClient(opt)
	if err != nil {
		return 0, err
	}
	defer pub.Close()
	subscribe := floorSubscribe
	if procs {
		subscribe = floorProcess
	}
	seen, stop, err := subscribe(ctx, t, channel)
	if err != nil {
		return 0, err
	}
	defer stop()
	script := rueidis.NewLuaScript("redis.call('PUBLISH', KEYS[1], ARGV[1]) return 1")
	var h Histogram
	timer := time.NewTimer(time.Second)
	defer timer.Stop()
	for i := 0; i < n+n/10; i++ {
		if pause > 0 {
			time.Sleep(pause)
		}
		start := time.Now()
		if err := script.Exec(ctx, pub, []string{channel}, []string{"m"}).Error(); err != nil {
			return 0, err
		}
		timer.Reset(time.Second)
		select {
		case at := <-seen:
			if i >= n/10 { // the first tenth warms the connections up
				h.Record(time.Duration(at - start.UnixNano()))
			}
		case <-timer.C:
			return 0, errors.New("a published message did not arrive within 1s")
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
	return h.Quantile(0.5), nil
}

// floorSubscribe subscribes a client of its own to channel; the channel it
// returns gets the Unix nanosecond time at which each message was seen.
func floorSubscribe(ctx context.Context, t *Target, channel string) (
	<-chan int64, func(), error) {
	opt, err := t.RueidisOption()
	if err != nil {
		return nil, nil, err
	}
	sub, err := rueidis.NewClient(opt)
	if err != nil {
		return nil, nil, err
	}
	dc, release := sub.Dedicate()
	stop := func() {
		dc.Close()
		release()
		sub.Close()
	}
	seen := make(chan int64, 1)
	dc.SetPubSubHooks(rueidis.PubSubHooks{OnMessage: func(rueidis.PubSubMessage) {
		select {
		case seen <- time.Now().UnixNano():
		default:
		}
	}})
	if err := dc.Do(ctx, dc.B().Subscribe().Channel(channel).Build()).Error(); err != nil {
		stop()
		return nil, nil, err
	}
	return seen, stop, nil
}

// floorProcess starts this executable again as a floor subscriber (a
// contended-procs child whose config names the channel) and returns the
// times it reports.
func floorProcess(ctx context.Context, t *Target, channel string) (<-chan int64, func(), error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, nil, err
	}
	stderr := &tailBuffer{max: 4096}
	cmd, stdin, stdout, err := startSelf(ctx, exe, stderr)
	if err != nil {
		return nil, nil, fmt.Errorf("start subscriber process: %w", err)
	}
	stop := func() {
		stdin.Close()
		done := make(chan struct{})
		go func() {
			cmd.Wait()
			close(done)
		}()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	}
	cfg := childConfig{Addr: t.Addr, URL: t.URL, Kind: t.Kind, Version: t.Version, Floor: channel}
	if err := writeLine(stdin, cfg); err != nil {
		stop()
		return nil, nil, err
	}
	ready := make(chan struct{})
	seen := make(chan int64, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			var l childLine
			if json.Unmarshal(sc.Bytes(), &l) != nil {
				continue
			}
			switch {
			case l.Ready:
				close(ready)
			case l.A != 0:
				select {
				case seen <- l.A:
				default:
				}
			}
		}
		io.Copy(io.Discard, stdout)
	}()
	select {
	case <-ready:
		return seen, stop, nil
	case <-time.After(childReadyTimeout):
	case <-ctx.Done():
	}
	stop()
	return nil, nil, fmt.Errorf("subscriber process not ready; stderr: %s", stderr.String())
}

// runFloorChild is the subscriber process of PushFloor: it reports
// {"ready":true} once subscribed, then {"a":ns} for every message, until its
// stdin ends (or childLinger after the parent stops writing).
func runFloorChild(cfg childConfig, gone <-chan struct{}, stdout io.Writer) error {
	target := &Target{Addr: cfg.Addr, URL: cfg.URL, Kind: cfg.Kind, Version: cfg.Version}
	ctx, cancel := context.WithTimeout(context.Background(), childReadyTimeout)
	defer cancel()
	seen, stop, err := floorSubscribe(ctx, target, cfg.Floor)
	if err != nil {
		return err
	}
	defer stop()
	enc := json.NewEncoder(stdout)
	if err := enc.Encode(childLine{Ready: true}); err != nil {
		return err
	}
	for {
		select {
		case at := <-seen:
			if err := enc.Encode(childLine{A: at}); err != nil {
				return err
			}
		case <-gone:
			return nil
		case <-time.After(10 * childLinger):
			return errors.New("no end from the parent")
		}
	}
}
